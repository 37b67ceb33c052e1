package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Blob is one sealed software key as the soft keystore persists it. Only
// Sealed is secret, and it is ciphertext from the Sealer.
type Blob struct {
	Name      string
	Type      KeyType
	PublicDER []byte // PKIX public key
	Sealed    []byte // Sealer.Seal(ctx, SoftKeyKind, Name, PKCS#8 private key)
	CreatedAt time.Time
}

// BlobStore persists sealed software keys. hsm does not import storage; the
// wiring layer adapts storage.KeyBlobs to it field for field
// (storage.KeyBlob.Type is string(Blob.Type)) and maps errors:
// storage.ErrConflict from Put becomes ErrKeyExists, storage.ErrNotFound from
// Get becomes ErrKeyNotFound (wrap them with %w; Soft uses errors.Is).
type BlobStore interface {
	// PutBlob stores a new blob; ErrKeyExists if the name is taken.
	PutBlob(ctx context.Context, b Blob) error
	// GetBlob returns the named blob; ErrKeyNotFound if absent.
	GetBlob(ctx context.Context, name string) (Blob, error)
	// ListBlobs returns every blob (any order).
	ListBlobs(ctx context.Context) ([]Blob, error)
	// DeleteBlob deletes the named blob; ErrKeyNotFound if absent.
	DeleteBlob(ctx context.Context, name string) error
}

// Sealer encrypts values bound to a record; *barrier.Barrier satisfies it.
// If the Sealer also has a `Sealed() bool` method (the barrier does), Soft
// reports ErrSealed while it is sealed and stops signing with cached keys.
type Sealer interface {
	Seal(ctx context.Context, kind, id string, plaintext []byte) ([]byte, error)
	Open(ctx context.Context, kind, id string, sealed []byte) ([]byte, error)
}

// SoftKeyKind is the record kind soft keys are sealed under, so a sealed key
// cannot be replayed as any other kind of sealed value (or the reverse).
const SoftKeyKind = "hsm.softkey"

// Soft is the software keystore: keys are generated in-process and persisted
// only as ciphertext sealed by the barrier. Unsealed keys are cached in
// memory after first use, so signing costs one map lookup more than plain
// crypto/ecdsa. It is safe for concurrent use.
type Soft struct {
	blobs  BlobStore
	sealer Sealer
	log    *slog.Logger

	mu     sync.RWMutex
	cache  map[string]crypto.Signer // unsealed private keys by name
	closed bool
	// gen counts cache drops (a destroyed key, a seal): a load caches the
	// key it unsealed only if none happened since it read the blob, so a
	// key destroyed meanwhile is never cached after its destruction.
	gen uint64
}

var (
	_ Custody      = (*Soft)(nil)
	_ KeyDestroyer = (*Soft)(nil)
)

// NewSoft returns a software keystore over blobs, sealing keys with sealer.
// A nil logger discards logs.
func NewSoft(blobs BlobStore, sealer Sealer, logger *slog.Logger) *Soft {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Soft{blobs: blobs, sealer: sealer, log: logger, cache: map[string]crypto.Signer{}}
}

// CreateKey generates a key, seals its PKCS#8 encoding and stores it.
func (s *Soft) CreateKey(ctx context.Context, name string, typ KeyType) (KeyInfo, error) {
	if err := ValidateName(name); err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create: %w", err)
	}
	if !typ.Valid() {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: %q: %w", name, typ, ErrBadKeyType)
	}
	if err := s.usable(); err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: %w", name, err)
	}
	// Fail fast on a taken name before spending seconds on RSA generation.
	// No lock around check-and-put: the store's uniqueness on the name
	// decides a race, and key generation must not serialise all creation.
	if _, err := s.blobs.GetBlob(ctx, name); err == nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: %w", name, ErrKeyExists)
	} else if !errors.Is(err, ErrKeyNotFound) {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: %w", name, err)
	}

	priv, err := generate(typ)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: %w", name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: marshal: %w", name, err)
	}
	sealed, err := s.sealer.Seal(ctx, SoftKeyKind, name, der)
	clear(der)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: %w", name, s.sealErr(err))
	}
	pubDER, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: marshal public key: %w", name, err)
	}
	b := Blob{Name: name, Type: typ, PublicDER: pubDER, Sealed: sealed, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	if err := s.blobs.PutBlob(ctx, b); err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: create %q: store: %w", name, err)
	}
	s.mu.Lock()
	s.cache[name] = priv
	s.mu.Unlock()
	s.log.InfoContext(ctx, "software key created", "key", name, "type", string(typ))
	return KeyInfo{Name: name, Type: typ, Public: priv.Public(), CreatedAt: b.CreatedAt}, nil
}

// Signer returns a signer for the named key. The signer looks the key up on
// every Sign, so it stops working (ErrSealed) as soon as the Sealer seals or
// the keystore is closed, instead of keeping the key alive in the caller.
func (s *Soft) Signer(ctx context.Context, name string) (crypto.Signer, error) {
	priv, err := s.load(ctx, name)
	if err != nil {
		return nil, err
	}
	return &softSigner{s: s, name: name, pub: priv.Public()}, nil
}

// Key describes the named key from its stored, public part.
func (s *Soft) Key(ctx context.Context, name string) (KeyInfo, error) {
	if err := ValidateName(name); err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: key: %w", err)
	}
	if err := s.isClosed(); err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: key %q: %w", name, err)
	}
	b, err := s.blobs.GetBlob(ctx, name)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("soft keystore: key %q: %w", name, err)
	}
	return blobInfo(b)
}

// DestroyKey deletes the named key's sealed blob and drops it from the
// cache: signers of it fail from then on.
func (s *Soft) DestroyKey(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("soft keystore: destroy: %w", err)
	}
	if err := s.usable(); err != nil {
		return fmt.Errorf("soft keystore: destroy %q: %w", name, err)
	}
	if err := s.blobs.DeleteBlob(ctx, name); err != nil {
		return fmt.Errorf("soft keystore: destroy %q: %w", name, err)
	}
	s.mu.Lock()
	s.gen++
	delete(s.cache, name)
	s.mu.Unlock()
	s.log.InfoContext(ctx, "software key destroyed", "key", name)
	return nil
}

// ListKeys lists every key, sorted by name.
func (s *Soft) ListKeys(ctx context.Context) ([]KeyInfo, error) {
	if err := s.isClosed(); err != nil {
		return nil, fmt.Errorf("soft keystore: list: %w", err)
	}
	blobs, err := s.blobs.ListBlobs(ctx)
	if err != nil {
		return nil, fmt.Errorf("soft keystore: list: %w", err)
	}
	out := make([]KeyInfo, 0, len(blobs))
	for _, b := range blobs {
		ki, err := blobInfo(b)
		if err != nil {
			return nil, fmt.Errorf("soft keystore: list: %w", err)
		}
		out = append(out, ki)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Ping checks the blob store answers and the sealer is unsealed.
func (s *Soft) Ping(ctx context.Context) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("soft keystore: %w", err)
	}
	if _, err := s.blobs.ListBlobs(ctx); err != nil {
		return fmt.Errorf("soft keystore: ping: %w", err)
	}
	return nil
}

// Close drops every cached private key; later calls fail.
func (s *Soft) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	// Go cannot zero big.Int/ecdsa internals reliably; dropping the
	// references lets the collector reclaim them.
	clear(s.cache)
	return nil
}

var errClosed = errors.New("custody is closed")

func (s *Soft) isClosed() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errClosed
	}
	return nil
}

// usable fails when closed, or when the sealer says it is sealed (and then
// forgets cached keys: a sealed barrier means nobody may sign).
func (s *Soft) usable() error {
	if err := s.isClosed(); err != nil {
		return err
	}
	if sl, ok := s.sealer.(interface{ Sealed() bool }); ok && sl.Sealed() {
		s.mu.Lock()
		s.gen++
		clear(s.cache)
		s.mu.Unlock()
		return ErrSealed
	}
	return nil
}

func (s *Soft) sealErr(err error) error {
	if sl, ok := s.sealer.(interface{ Sealed() bool }); ok && sl.Sealed() {
		return fmt.Errorf("%w: %w", ErrSealed, err)
	}
	return err
}

// load returns the unsealed key, from cache or by opening its blob.
func (s *Soft) load(ctx context.Context, name string) (crypto.Signer, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("soft keystore: signer: %w", err)
	}
	if err := s.usable(); err != nil {
		return nil, fmt.Errorf("soft keystore: signer %q: %w", name, err)
	}
	s.mu.RLock()
	priv, ok := s.cache[name]
	gen := s.gen
	s.mu.RUnlock()
	if ok {
		return priv, nil
	}
	b, err := s.blobs.GetBlob(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("soft keystore: signer %q: %w", name, err)
	}
	der, err := s.sealer.Open(ctx, SoftKeyKind, name, b.Sealed)
	if err != nil {
		return nil, fmt.Errorf("soft keystore: signer %q: unseal: %w", name, s.sealErr(err))
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	clear(der)
	if err != nil {
		return nil, fmt.Errorf("soft keystore: signer %q: parse: %w", name, err)
	}
	priv, ok = key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("soft keystore: signer %q: %T is not a signer", name, key)
	}
	// The type and public key columns are not authenticated by the sealer;
	// check they agree with the sealed key so a tampered row is caught here.
	if typ, err := typeOf(priv.Public()); err != nil || typ != b.Type {
		return nil, fmt.Errorf("soft keystore: signer %q: stored type %q does not match the sealed key", name, b.Type)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil || subtle.ConstantTimeCompare(pubDER, b.PublicDER) != 1 {
		return nil, fmt.Errorf("soft keystore: signer %q: stored public key does not match the sealed key", name)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("soft keystore: signer %q: %w", name, errClosed)
	}
	if cached, ok := s.cache[name]; ok {
		priv = cached
	} else if gen == s.gen {
		s.cache[name] = priv
	}
	s.mu.Unlock()
	return priv, nil
}

// softSigner is what callers hold: a name and a public key, never the
// private key itself.
type softSigner struct {
	s    *Soft
	name string
	pub  crypto.PublicKey
}

func (k *softSigner) Public() crypto.PublicKey { return k.pub }

func (k *softSigner) Sign(rnd io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	priv, err := k.s.load(context.Background(), k.name)
	if err != nil {
		return nil, err
	}
	// Ed25519 signs the message itself; callers pass crypto.Hash(0).
	if rnd == nil {
		rnd = rand.Reader
	}
	return priv.Sign(rnd, digest, opts)
}

func generate(typ KeyType) (crypto.Signer, error) {
	switch typ {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	case Ed25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("%q: %w", typ, ErrBadKeyType)
}

// typeOf maps a public key to its KeyType.
func typeOf(pub crypto.PublicKey) (KeyType, error) {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		switch p.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		}
		return "", fmt.Errorf("curve %s: %w", p.Curve.Params().Name, ErrBadKeyType)
	case *rsa.PublicKey:
		switch p.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		}
		return "", fmt.Errorf("RSA-%d: %w", p.N.BitLen(), ErrBadKeyType)
	case ed25519.PublicKey:
		return Ed25519, nil
	}
	return "", fmt.Errorf("%T: %w", pub, ErrBadKeyType)
}

func blobInfo(b Blob) (KeyInfo, error) {
	pub, err := x509.ParsePKIXPublicKey(b.PublicDER)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("key %q: stored public key: %w", b.Name, err)
	}
	return KeyInfo{Name: b.Name, Type: b.Type, Public: pub, CreatedAt: b.CreatedAt}, nil
}
