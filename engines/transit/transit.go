// Package transit is the "transit" engine: encryption as a service. Named,
// versioned keys never leave Sigil: callers send plaintext and get
// ciphertext back (and the reverse), sign and verify, or compute HMACs.
// Key material is kept in the mount's store, sealed by the barrier.
//
// Transit mints no leased secrets; the server calls its methods directly.
// Ciphertexts, signatures and HMACs carry the key version that made them
// ("sigil:vN:base64"), so keys rotate without re-encrypting anything, and
// rewrap moves a ciphertext to the newest version without revealing it.
package transit

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// Type is the engine type name.
const Type = "transit"

// Key types.
const (
	AES256GCM        = "aes256-gcm"
	ChaCha20Poly1305 = "chacha20-poly1305"
	ECDSAP256        = "ecdsa-p256"
	Ed25519          = "ed25519"
	RSA3072          = "rsa-3072"
	HMAC             = "hmac"
)

// KeyTypes lists the key types in a stable order.
var KeyTypes = []string{AES256GCM, ChaCha20Poly1305, ECDSAP256, Ed25519, RSA3072, HMAC}

// Limits on untrusted input.
const (
	MaxInput      = 1 << 20 // plaintext or signed/HMAC'd input per item
	MaxCiphertext = MaxInput*4/3 + 256
	MaxBatch      = 1000
	MaxBatchBytes = 4 << 20
	MaxAAD        = 64 << 10
)

// Errors callers branch on.
var (
	ErrKeyNotFound = errors.New("transit: key not found")
	ErrKeyExists   = errors.New("transit: key already exists")
	// ErrInvalidCiphertext covers malformed, tampered and wrong-AAD
	// ciphertexts alike: AEAD cannot tell them apart, and neither should
	// an attacker.
	ErrInvalidCiphertext = errors.New("transit: ciphertext does not decrypt (malformed, tampered, wrong key or wrong associated data)")
	ErrVersionTooOld     = errors.New("transit: key version is below the minimum decryption version")
	ErrWrongKeyType      = errors.New("transit: operation not supported by this key type")
	ErrTooLarge          = errors.New("transit: input too large")
)

// Transit has keys, not leased secrets.
var _ engines.Transit = (*Engine)(nil)

// Register adds the engine type to reg.
func Register(reg *engines.Registry) error {
	return reg.Register(Type, func(env engines.Env) (engines.Engine, error) { return New(env) })
}

// Engine is one mounted transit engine.
type Engine struct {
	env engines.Env
	log *slog.Logger

	mu    sync.Mutex
	cache map[string]*cached
	// gen counts forgets: a read that began before a change made here
	// (and so may have fetched the key as it was) must not be cached
	// after the change dropped the old copy.
	gen uint64
}

// cacheTTL bounds how long a key changed on another node (a rotation, a
// raised minimum version) goes unseen here. Changes made through this
// engine update the cache at once.
const cacheTTL = time.Second

type cached struct {
	k       *key
	raw     []byte
	fetched time.Time
}

// New builds an engine for env.
func New(env engines.Env) (*Engine, error) {
	if env.Store == nil {
		return nil, fmt.Errorf("%w: transit needs a store", engines.ErrNotConfigured)
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{env: env, log: log, cache: map[string]*cached{}}, nil
}

// ---- engines.Engine: transit mints no leased secrets, so it implements
// only the base interface and engines.Transit; Mounts refuses roles and
// mints on a transit mount.

// Configure implements engines.Engine; transit has no mount settings.
func (e *Engine) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	if len(cfg) > 0 {
		return nil, fmt.Errorf("%w: transit takes no configuration; keys are set with `sigil transit config`", engines.ErrInvalidConfig)
	}
	return cfg, nil
}

// Close implements engines.Engine.
func (e *Engine) Close() error { return nil }

// ---- keys

// key is a named key as stored (sealed) in the mount's store.
type key struct {
	Type string `json:"type"`
	// Managed keys' versions live in the HSM (aes256-gcm only).
	Managed         bool             `json:"managed,omitempty"`
	Versions        map[int]*version `json:"versions"`
	Latest          int              `json:"latest"`
	MinDecryption   int              `json:"min_decryption_version"`
	DeletionAllowed bool             `json:"deletion_allowed"`
	Created         time.Time        `json:"created"`
}

type version struct {
	// Material is the symmetric key, or the PKCS#8 DER private key; empty
	// for a managed version, whose key is the HSM's TokenKey.
	Material []byte    `json:"material,omitempty"`
	TokenKey string    `json:"token_key,omitempty"`
	Created  time.Time `json:"created"`

	aead   aead          // parsed once per cache fill
	signer crypto.Signer // asymmetric types
}

// aead is AES-GCM or ChaCha20-Poly1305 in software, or AES-GCM in the HSM.
type aead interface {
	NonceSize() int
	Overhead() int
	seal(nonce, pt, ad []byte) ([]byte, error)
	open(nonce, ct, ad []byte) ([]byte, error)
}

type softAEAD struct{ cipher.AEAD }

func (a softAEAD) seal(nonce, pt, ad []byte) ([]byte, error) { return a.Seal(nil, nonce, pt, ad), nil }
func (a softAEAD) open(nonce, ct, ad []byte) ([]byte, error) {
	pt, err := a.Open(nil, nonce, ct, ad)
	if err != nil {
		return nil, errAuth
	}
	return pt, nil
}

// errAuth is an AEAD tag mismatch, as opposed to the HSM failing.
var errAuth = errors.New("transit: message authentication failed")

// tokenAEAD is a managed version: every operation runs in the HSM.
type tokenAEAD struct{ engines.ManagedAEAD }

func (tokenAEAD) NonceSize() int { return 12 }
func (tokenAEAD) Overhead() int  { return 16 }
func (a tokenAEAD) seal(nonce, pt, ad []byte) ([]byte, error) {
	return a.Seal(nonce, pt, ad)
}
func (a tokenAEAD) open(nonce, ct, ad []byte) ([]byte, error) {
	pt, err := a.Open(nonce, ct, ad)
	if errors.Is(err, hsm.ErrBadWrappedKey) {
		return nil, errAuth
	}
	return pt, err
}

// CheckName validates a key name.
func CheckName(name string) error {
	if engines.CheckRoleName(name) != nil {
		return fmt.Errorf("%w: key name %q (1-64 of [A-Za-z0-9_.-])", engines.ErrInvalidPath, name)
	}
	return nil
}

func storeKey(name string) string { return "keys/" + name }

func newMaterial(typ string) ([]byte, error) {
	switch typ {
	case AES256GCM, ChaCha20Poly1305, HMAC:
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		return b, nil
	case ECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case RSA3072:
		k, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	}
	return nil, fmt.Errorf("%w: key type %q (use one of %s)", engines.ErrInvalidRequest, typ, strings.Join(KeyTypes, ", "))
}

// prepare parses v's material for use.
func (e *Engine) prepare(ctx context.Context, v *version, typ string) error {
	var err error
	if v.TokenKey != "" {
		if e.env.Managed == nil {
			return fmt.Errorf("%w: managed key version needs the HSM", engines.ErrNotConfigured)
		}
		a, err := e.env.Managed.AEAD(ctx, v.TokenKey, false)
		if err != nil {
			return err
		}
		v.aead = tokenAEAD{a}
		return nil
	}
	switch typ {
	case AES256GCM:
		var b cipher.Block
		var g cipher.AEAD
		if b, err = aes.NewCipher(v.Material); err == nil {
			g, err = cipher.NewGCM(b)
			v.aead = softAEAD{g}
		}
	case ChaCha20Poly1305:
		var c cipher.AEAD
		c, err = chacha20poly1305.New(v.Material)
		v.aead = softAEAD{c}
	case ECDSAP256, Ed25519, RSA3072:
		var k any
		if k, err = x509.ParsePKCS8PrivateKey(v.Material); err == nil {
			s, ok := k.(crypto.Signer)
			if !ok {
				return errors.New("transit: stored key is not a signer")
			}
			v.signer = s
		}
	}
	return err
}

// load returns the key, from the cache when fresh.
func (e *Engine) load(ctx context.Context, name string) (*key, []byte, error) {
	if err := CheckName(name); err != nil {
		return nil, nil, err
	}
	e.mu.Lock()
	c, gen := e.cache[name], e.gen
	e.mu.Unlock()
	if c != nil && time.Since(c.fetched) < cacheTTL {
		return c.k, c.raw, nil
	}
	k, raw, err := e.fetch(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	e.remember(name, k, raw, gen)
	return k, raw, nil
}

// fetch reads and decodes a key from storage into a value nobody else
// holds, bypassing the cache.
func (e *Engine) fetch(ctx context.Context, name string) (*key, []byte, error) {
	raw, err := e.env.Store.Get(ctx, storeKey(name))
	if errors.Is(err, storage.ErrNotFound) {
		e.forget(name)
		return nil, nil, fmt.Errorf("%w: %s", ErrKeyNotFound, name)
	}
	if err != nil {
		return nil, nil, err
	}
	k, err := e.decode(ctx, raw)
	if err != nil {
		return nil, nil, fmt.Errorf("transit: key %s: %w", name, err)
	}
	return k, raw, nil
}

func (e *Engine) decode(ctx context.Context, raw []byte) (*key, error) {
	k := &key{}
	if err := json.Unmarshal(raw, k); err != nil {
		return nil, err
	}
	for _, v := range k.Versions {
		if err := e.prepare(ctx, v, k.Type); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// remember caches k, fetched by a read that began at generation gen,
// unless a change made here since may postdate what it fetched.
func (e *Engine) remember(name string, k *key, raw []byte, gen uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.gen != gen {
		return
	}
	e.cache[name] = &cached{k: k, raw: raw, fetched: time.Now()}
}

func (e *Engine) forget(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.gen++
	delete(e.cache, name)
}

// update applies fn to a fresh copy of the key and stores it with a
// compare-and-swap, retrying if another node changed it meanwhile.
func (e *Engine) update(ctx context.Context, name string, fn func(k *key) error) (*key, error) {
	for range 10 {
		// Not the cached key: fn mutates it, and concurrent readers (or
		// another update) may hold the cached one.
		if err := CheckName(name); err != nil {
			return nil, err
		}
		k, raw, err := e.fetch(ctx, name)
		if err != nil {
			return nil, err
		}
		if err := fn(k); err != nil {
			return nil, err
		}
		b, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		err = e.env.Store.Replace(ctx, storeKey(name), raw, b)
		clear(b)
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		e.forget(name)
		if err != nil {
			return nil, err
		}
		return k, nil
	}
	return nil, fmt.Errorf("transit: key %s changed concurrently too often: %w", name, storage.ErrConflict)
}

// newVersion makes a version's key: in software, or in the HSM for a
// managed key (under a random token name, never reused).
func (e *Engine) newVersion(ctx context.Context, typ string, managed bool) (*version, error) {
	now := time.Now().UTC()
	if !managed {
		mat, err := newMaterial(typ)
		if err != nil {
			return nil, err
		}
		return &version{Material: mat, Created: now}, nil
	}
	var rnd [10]byte
	_, _ = rand.Read(rnd[:])
	name := "transit-" + hex.EncodeToString(rnd[:])
	if _, err := e.env.Managed.AEAD(ctx, name, true); err != nil {
		return nil, fmt.Errorf("transit: create key in the HSM: %w", err)
	}
	return &version{TokenKey: name, Created: now}, nil
}

// CreateKey makes a new key with version 1. A managed key (aes256-gcm
// only, with an HSM configured) is generated in the HSM and used there.
func (e *Engine) CreateKey(ctx context.Context, name, typ string, managed bool) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if typ == "" {
		typ = AES256GCM
	}
	if managed && typ != AES256GCM {
		return fmt.Errorf("%w: managed keys are aes256-gcm only", engines.ErrInvalidRequest)
	}
	if managed && e.env.Managed == nil {
		return fmt.Errorf("%w: managed keys need an HSM (hsm.uri); this server keeps keys in software", engines.ErrInvalidRequest)
	}
	if _, err := newMaterial(typ); err != nil { // validates typ before any HSM object is made
		return err
	}
	v, err := e.newVersion(ctx, typ, managed)
	if err != nil {
		return err
	}
	mat := v.Material
	now := v.Created
	k := &key{Type: typ, Managed: managed, Versions: map[int]*version{1: v}, Latest: 1, MinDecryption: 1, Created: now}
	b, err := json.Marshal(k)
	clear(mat)
	if err != nil {
		return err
	}
	defer clear(b)
	if err := e.env.Store.Create(ctx, storeKey(name), b); errors.Is(err, storage.ErrConflict) {
		return fmt.Errorf("%w: %s", ErrKeyExists, name)
	} else if err != nil {
		return err
	}
	e.log.Info("transit key created", "key", name, "type", typ)
	return nil
}

// RotateKey adds a new version, which encrypts and signs from now on.
func (e *Engine) RotateKey(ctx context.Context, name string) (int, error) {
	k, err := e.update(ctx, name, func(k *key) error {
		v, err := e.newVersion(ctx, k.Type, k.Managed)
		if err != nil {
			return err
		}
		k.Latest++
		k.Versions[k.Latest] = v
		return nil
	})
	if err != nil {
		return 0, err
	}
	e.log.Info("transit key rotated", "key", name, "version", k.Latest)
	return k.Latest, nil
}

// KeyConfig changes a key's settings; nil fields are left alone.
type KeyConfig = engines.TransitKeyConfig

// ConfigureKey applies c.
func (e *Engine) ConfigureKey(ctx context.Context, name string, c KeyConfig) error {
	_, err := e.update(ctx, name, func(k *key) error {
		if m := c.MinDecryptionVersion; m != nil {
			if *m < 1 || *m > k.Latest {
				return fmt.Errorf("%w: min_decryption_version %d must be between 1 and the latest version %d", engines.ErrInvalidRequest, *m, k.Latest)
			}
			k.MinDecryption = *m
		}
		if d := c.DeletionAllowed; d != nil {
			k.DeletionAllowed = *d
		}
		return nil
	})
	return err
}

// DeleteKey removes a key whose deletion_allowed is set. Everything it
// encrypted becomes undecryptable.
func (e *Engine) DeleteKey(ctx context.Context, name string) error {
	k, _, err := e.load(ctx, name)
	if err != nil {
		return err
	}
	if !k.DeletionAllowed {
		return fmt.Errorf("%w: key %s does not allow deletion (sigil transit config --deletion-allowed true first)", engines.ErrInvalidRequest, name)
	}
	e.forget(name)
	if err := e.env.Store.Delete(ctx, storeKey(name)); errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrKeyNotFound, name)
	} else if err != nil {
		return err
	}
	e.log.Info("transit key deleted", "key", name)
	return nil
}

// ListKeys returns the key names, sorted.
func (e *Engine) ListKeys(ctx context.Context) ([]string, error) {
	keys, err := e.env.Store.List(ctx, "keys/")
	if err != nil {
		return nil, err
	}
	for i, k := range keys {
		keys[i] = strings.TrimPrefix(k, "keys/")
	}
	sort.Strings(keys)
	return keys, nil
}

// KeyInfo describes a key without any secret material.
type KeyInfo = engines.TransitKeyInfo

// VersionInfo is one version; PublicKeyPEM is set for asymmetric keys.
type VersionInfo = engines.TransitKeyVersion

// ReadKey describes a key.
func (e *Engine) ReadKey(ctx context.Context, name string) (*KeyInfo, error) {
	k, _, err := e.load(ctx, name)
	if err != nil {
		return nil, err
	}
	info := &KeyInfo{Name: name, Type: k.Type, Managed: k.Managed, Latest: k.Latest, MinDecryptionVersion: k.MinDecryption, DeletionAllowed: k.DeletionAllowed}
	for n := 1; n <= k.Latest; n++ {
		v := k.Versions[n]
		if v == nil {
			continue
		}
		vi := VersionInfo{Version: n, Created: v.Created}
		if v.signer != nil {
			der, err := x509.MarshalPKIXPublicKey(v.signer.Public())
			if err != nil {
				return nil, err
			}
			vi.PublicKeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		}
		info.Versions = append(info.Versions, vi)
	}
	return info, nil
}

// ---- wire format

const prefix = "sigil:v"

func format(ver int, b []byte) string {
	return prefix + strconv.Itoa(ver) + ":" + base64.StdEncoding.EncodeToString(b)
}

// ParseVersioned splits "sigil:vN:base64" into N and the decoded bytes.
func ParseVersioned(s string) (int, []byte, error) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return 0, nil, ErrInvalidCiphertext
	}
	num, b64, ok := strings.Cut(rest, ":")
	if !ok || num == "" || len(num) > 9 || strings.HasPrefix(num, "0") {
		return 0, nil, ErrInvalidCiphertext
	}
	ver, err := strconv.Atoi(num)
	if err != nil || ver < 1 {
		return 0, nil, ErrInvalidCiphertext
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return 0, nil, ErrInvalidCiphertext
	}
	return ver, b, nil
}

// aad binds a ciphertext to its mount, key and version as well as to the
// caller's associated data, so it cannot be replayed against another key
// or relabelled with another version.
func (e *Engine) aad(name string, ver int, user []byte) []byte {
	b := make([]byte, 0, 48+len(e.env.Mount)+len(name)+len(user))
	b = append(b, "sigil-transit-v1\x00"...)
	b = append(b, e.env.Mount...)
	b = append(b, 0)
	b = append(b, name...)
	b = append(b, 0)
	b = strconv.AppendInt(b, int64(ver), 10)
	b = append(b, 0)
	return append(b, user...)
}

// ---- encryption

// Item is one input of a batch operation.
type Item = engines.TransitItem

// Result is one output of a batch operation; Err is per item.
type Result = engines.TransitResult

func checkBatch(items []Item) error {
	if len(items) == 0 {
		return fmt.Errorf("%w: no items", engines.ErrInvalidRequest)
	}
	if len(items) > MaxBatch {
		return fmt.Errorf("%w: %d items; a batch holds at most %d", ErrTooLarge, len(items), MaxBatch)
	}
	total := 0
	for _, it := range items {
		total += len(it.Plaintext) + len(it.Ciphertext) + len(it.AssociatedData)
	}
	if total > MaxBatchBytes {
		return fmt.Errorf("%w: batch of %d bytes; at most %d", ErrTooLarge, total, MaxBatchBytes)
	}
	return nil
}

func (e *Engine) aeadKey(ctx context.Context, name string) (*key, error) {
	k, _, err := e.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if k.Type != AES256GCM && k.Type != ChaCha20Poly1305 {
		return nil, fmt.Errorf("%w: %s is a %s key; encryption needs aes256-gcm or chacha20-poly1305", ErrWrongKeyType, name, k.Type)
	}
	return k, nil
}

func (e *Engine) seal(k *key, name string, pt, ad []byte) (string, error) {
	if len(pt) > MaxInput {
		return "", fmt.Errorf("%w: plaintext of %d bytes; at most %d (1 MiB)", ErrTooLarge, len(pt), MaxInput)
	}
	if len(ad) > MaxAAD {
		return "", fmt.Errorf("%w: associated data of %d bytes; at most %d", ErrTooLarge, len(ad), MaxAAD)
	}
	v := k.Versions[k.Latest]
	nonce := make([]byte, v.aead.NonceSize(), v.aead.NonceSize()+len(pt)+v.aead.Overhead())
	_, _ = rand.Read(nonce)
	ct, err := v.aead.seal(nonce, pt, e.aad(name, k.Latest, ad))
	if err != nil {
		return "", fmt.Errorf("transit: encrypt: %w", err)
	}
	return format(k.Latest, append(nonce, ct...)), nil
}

func (e *Engine) open(k *key, name, ct string, ad []byte) ([]byte, int, error) {
	if len(ct) > MaxCiphertext {
		return nil, 0, fmt.Errorf("%w: ciphertext of %d bytes", ErrTooLarge, len(ct))
	}
	ver, raw, err := ParseVersioned(ct)
	if err != nil {
		return nil, 0, err
	}
	if ver < k.MinDecryption {
		return nil, ver, fmt.Errorf("%w: v%d < v%d", ErrVersionTooOld, ver, k.MinDecryption)
	}
	v := k.Versions[ver]
	if v == nil || len(raw) < v.aead.NonceSize()+v.aead.Overhead() {
		return nil, ver, ErrInvalidCiphertext
	}
	n := v.aead.NonceSize()
	pt, err := v.aead.open(raw[:n], raw[n:], e.aad(name, ver, ad))
	if errors.Is(err, errAuth) {
		return nil, ver, ErrInvalidCiphertext
	}
	if err != nil {
		return nil, ver, fmt.Errorf("transit: decrypt in the HSM: %w", err)
	}
	return pt, ver, nil
}

// Encrypt encrypts each item's plaintext with the key's latest version.
func (e *Engine) Encrypt(ctx context.Context, name string, items []Item) ([]Result, error) {
	if err := checkBatch(items); err != nil {
		return nil, err
	}
	k, err := e.aeadKey(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]Result, len(items))
	for i, it := range items {
		out[i].Ciphertext, out[i].Err = e.seal(k, name, it.Plaintext, it.AssociatedData)
	}
	return out, nil
}

// Decrypt decrypts each item's ciphertext.
func (e *Engine) Decrypt(ctx context.Context, name string, items []Item) ([]Result, error) {
	if err := checkBatch(items); err != nil {
		return nil, err
	}
	k, err := e.aeadKey(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]Result, len(items))
	for i, it := range items {
		out[i].Plaintext, _, out[i].Err = e.open(k, name, it.Ciphertext, it.AssociatedData)
	}
	return out, nil
}

// Rewrap decrypts each ciphertext and encrypts it again with the latest
// version; the plaintext never leaves the engine.
func (e *Engine) Rewrap(ctx context.Context, name string, items []Item) ([]Result, error) {
	if err := checkBatch(items); err != nil {
		return nil, err
	}
	k, err := e.aeadKey(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]Result, len(items))
	for i, it := range items {
		pt, _, err := e.open(k, name, it.Ciphertext, it.AssociatedData)
		if err != nil {
			out[i].Err = err
			continue
		}
		out[i].Ciphertext, out[i].Err = e.seal(k, name, pt, it.AssociatedData)
		clear(pt)
	}
	return out, nil
}

// DataKey makes a fresh data key of bits (128, 256 or 512) and returns it
// with its copy encrypted under the named key. The caller seals the
// plaintext to its recipient.
func (e *Engine) DataKey(ctx context.Context, name string, bits int, ad []byte) (plaintext []byte, wrapped string, err error) {
	if bits == 0 {
		bits = 256
	}
	if bits != 128 && bits != 256 && bits != 512 {
		return nil, "", fmt.Errorf("%w: data key bits %d (use 128, 256 or 512)", engines.ErrInvalidRequest, bits)
	}
	k, err := e.aeadKey(ctx, name)
	if err != nil {
		return nil, "", err
	}
	pt := make([]byte, bits/8)
	_, _ = rand.Read(pt)
	wrapped, err = e.seal(k, name, pt, ad)
	if err != nil {
		clear(pt)
		return nil, "", err
	}
	return pt, wrapped, nil
}

// ---- signatures and HMACs

// SignOptions choose how an input is signed.
type SignOptions = engines.TransitSignOptions

func (e *Engine) signerKey(ctx context.Context, name string) (*key, error) {
	k, _, err := e.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if k.Type != ECDSAP256 && k.Type != Ed25519 && k.Type != RSA3072 {
		return nil, fmt.Errorf("%w: %s is a %s key; signing needs ecdsa-p256, ed25519 or rsa-3072", ErrWrongKeyType, name, k.Type)
	}
	return k, nil
}

// digest returns what the key's signer signs and the options to pass.
func digest(typ string, input []byte, o SignOptions) ([]byte, crypto.SignerOpts, error) {
	if len(input) > MaxInput {
		return nil, nil, fmt.Errorf("%w: input of %d bytes; at most %d", ErrTooLarge, len(input), MaxInput)
	}
	if typ == Ed25519 {
		if o.Prehashed {
			return nil, nil, fmt.Errorf("%w: ed25519 signs the message itself, not a digest", engines.ErrInvalidRequest)
		}
		return input, crypto.Hash(0), nil
	}
	d := input
	if o.Prehashed {
		if len(input) != sha256.Size {
			return nil, nil, fmt.Errorf("%w: a prehashed input must be a %d-byte SHA-256 digest", engines.ErrInvalidRequest, sha256.Size)
		}
	} else {
		s := sha256.Sum256(input)
		d = s[:]
	}
	if typ == RSA3072 && !o.RSAPKCS1v15 {
		return d, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, nil
	}
	return d, crypto.SHA256, nil
}

// Sign signs input with the key's latest version.
func (e *Engine) Sign(ctx context.Context, name string, input []byte, o SignOptions) (string, error) {
	k, err := e.signerKey(ctx, name)
	if err != nil {
		return "", err
	}
	d, opts, err := digest(k.Type, input, o)
	if err != nil {
		return "", err
	}
	sig, err := k.Versions[k.Latest].signer.Sign(rand.Reader, d, opts)
	if err != nil {
		return "", fmt.Errorf("transit: sign: %w", err)
	}
	return format(k.Latest, sig), nil
}

// Verify checks a signature made by Sign (any version at or above the
// minimum decryption version).
func (e *Engine) Verify(ctx context.Context, name string, input []byte, signature string, o SignOptions) (bool, error) {
	k, err := e.signerKey(ctx, name)
	if err != nil {
		return false, err
	}
	ver, sig, err := ParseVersioned(signature)
	if err != nil {
		return false, fmt.Errorf("%w: signature is not sigil:vN:base64", engines.ErrInvalidRequest)
	}
	if ver < k.MinDecryption {
		return false, fmt.Errorf("%w: v%d < v%d", ErrVersionTooOld, ver, k.MinDecryption)
	}
	v := k.Versions[ver]
	if v == nil {
		return false, nil
	}
	d, opts, err := digest(k.Type, input, o)
	if err != nil {
		return false, err
	}
	switch pub := v.signer.Public().(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(pub, d, sig), nil
	case ed25519.PublicKey:
		return ed25519.Verify(pub, d, sig), nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(pub, crypto.SHA256, d, sig, pss) == nil, nil
		}
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, d, sig) == nil, nil
	}
	return false, ErrWrongKeyType
}

func (e *Engine) hmacKey(ctx context.Context, name string) (*key, error) {
	k, _, err := e.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if k.Type != HMAC {
		return nil, fmt.Errorf("%w: %s is a %s key; HMAC needs an hmac key", ErrWrongKeyType, name, k.Type)
	}
	return k, nil
}

func mac(material, input []byte) []byte {
	m := hmac.New(sha256.New, material)
	m.Write(input)
	return m.Sum(nil)
}

// HMAC returns HMAC-SHA-256 of input under the key's latest version.
func (e *Engine) HMAC(ctx context.Context, name string, input []byte) (string, error) {
	if len(input) > MaxInput {
		return "", fmt.Errorf("%w: input of %d bytes; at most %d", ErrTooLarge, len(input), MaxInput)
	}
	k, err := e.hmacKey(ctx, name)
	if err != nil {
		return "", err
	}
	return format(k.Latest, mac(k.Versions[k.Latest].Material, input)), nil
}

// VerifyHMAC checks an HMAC made by HMAC, in constant time.
func (e *Engine) VerifyHMAC(ctx context.Context, name string, input []byte, tag string) (bool, error) {
	if len(input) > MaxInput {
		return false, fmt.Errorf("%w: input of %d bytes; at most %d", ErrTooLarge, len(input), MaxInput)
	}
	k, err := e.hmacKey(ctx, name)
	if err != nil {
		return false, err
	}
	ver, want, err := ParseVersioned(tag)
	if err != nil {
		return false, fmt.Errorf("%w: hmac is not sigil:vN:base64", engines.ErrInvalidRequest)
	}
	if ver < k.MinDecryption {
		return false, fmt.Errorf("%w: v%d < v%d", ErrVersionTooOld, ver, k.MinDecryption)
	}
	v := k.Versions[ver]
	if v == nil {
		return false, nil
	}
	return hmac.Equal(mac(v.Material, input), want), nil
}
