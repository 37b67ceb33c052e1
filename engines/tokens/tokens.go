// Package tokens is the "tokens" secret engine: it mints ephemeral API
// tokens for services, either opaque (sgl_…) or JWTs signed by a key in
// custody, each tracked by a lease. The lease is the truth: a token is
// active exactly while its lease is active and unexpired, so revoking the
// lease deactivates the token at once, and Revoke has nothing to destroy.
//
// Opaque tokens embed their lease id, so introspection needs no index: the
// server decodes the lease id, loads the lease, and the engine compares the
// token's keyed hash (HMAC-SHA-256 under a per-mount key kept sealed in the
// mount's store) with the one recorded in the lease, in constant time. The
// token itself is stored nowhere.
package tokens

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// Type is the engine type name.
const Type = "tokens"

// Prefix marks opaque tokens so secret scanners can find leaked ones.
const Prefix = "sgl_"

// MaxTokenLen bounds a presented token before any work is done on it.
const MaxTokenLen = 8 << 10

// Configuration keys.
const (
	KeyJWTKeyType   = "jwt_key_type"
	KeyIssuer       = "issuer"
	KeyKeyRetention = "key_retention"
)

// Role keys.
const (
	KeyFormat    = "format"
	KeyTTL       = "ttl"
	KeyMaxTTL    = "max_ttl"
	KeyAudience  = "audience"
	KeyScopes    = "scopes"
	KeyClaims    = "claims"
	KeyRenewable = "renewable"
)

// Formats.
const (
	FormatOpaque = "opaque"
	FormatJWT    = "jwt"
)

// Defaults.
const (
	DefaultTTL          = time.Hour
	DefaultMaxTTL       = 24 * time.Hour
	DefaultKeyRetention = 24 * time.Hour
)

// ErrInactive is what introspection of an unknown, malformed, revoked or
// expired token reports; callers answer active=false and nothing more.
var ErrInactive = errors.New("tokens: token is not active")

// The tokens engine mints leased tokens, publishes its JWKS and
// introspects what it minted.
var (
	_ engines.Leased        = (*Engine)(nil)
	_ engines.RootRotator   = (*Engine)(nil)
	_ engines.JWKSPublisher = (*Engine)(nil)
	_ engines.Introspector  = (*Engine)(nil)
)

// Register adds the engine type to reg.
func Register(reg *engines.Registry) error {
	return reg.Register(Type, func(env engines.Env) (engines.Engine, error) { return New(env) })
}

// Engine is one mounted tokens engine.
type Engine struct {
	env engines.Env
	log *slog.Logger

	mu  sync.RWMutex
	cfg config
	// keys caches the mount's signing-key set and HMAC key; reloaded from
	// the store when another node changed them (kid unknown here).
	keyset  *keySet
	hmacKey []byte
}

type config struct {
	keyType   hsm.KeyType
	issuer    string
	retention time.Duration
}

// New builds an engine for env. It needs env.Store; JWT roles also need
// env.Custody.
func New(env engines.Env) (*Engine, error) {
	if env.Store == nil {
		return nil, fmt.Errorf("%w: tokens engine needs a store", engines.ErrNotConfigured)
	}
	e := &Engine{env: env, log: env.Logger}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	cfg, err := parseConfig(env.Mount, nil)
	if err != nil {
		return nil, err
	}
	e.cfg = cfg
	return e, nil
}

var algs = map[hsm.KeyType]string{
	hsm.ECDSAP256: "ES256",
	hsm.ECDSAP384: "ES384",
	hsm.Ed25519:   "EdDSA",
	hsm.RSA3072:   "RS256",
}

// jwtAlgs are the algorithms a presented JWT may use (never "none").
var jwtAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.EdDSA, jose.RS256}

func parseConfig(mount string, in map[string]string) (config, error) {
	c := config{keyType: hsm.ECDSAP256, issuer: "sigil:" + mount, retention: DefaultKeyRetention}
	for k, v := range in {
		switch k {
		case KeyJWTKeyType:
			if _, ok := algs[hsm.KeyType(v)]; !ok {
				return c, fmt.Errorf("%w: %s %q: use ecdsa-p256, ecdsa-p384, ed25519 or rsa-3072", engines.ErrInvalidConfig, k, v)
			}
			c.keyType = hsm.KeyType(v)
		case KeyIssuer:
			if v == "" || len(v) > 256 {
				return c, fmt.Errorf("%w: %s must be 1-256 bytes", engines.ErrInvalidConfig, k)
			}
			c.issuer = v
		case KeyKeyRetention:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return c, fmt.Errorf("%w: %s must be a positive duration", engines.ErrInvalidConfig, k)
			}
			c.retention = d
		default:
			return c, fmt.Errorf("%w: unknown configuration key %q (want %s, %s or %s)", engines.ErrInvalidConfig, k, KeyJWTKeyType, KeyIssuer, KeyKeyRetention)
		}
	}
	return c, nil
}

// Configure implements engines.Engine.
func (e *Engine) Configure(_ context.Context, in map[string]string) (map[string]string, error) {
	c, err := parseConfig(e.env.Mount, in)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.cfg = c
	e.mu.Unlock()
	return map[string]string{KeyJWTKeyType: string(c.keyType), KeyIssuer: c.issuer, KeyKeyRetention: c.retention.String()}, nil
}

func (e *Engine) config() config {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.cfg
}

// role is a parsed role.
type role struct {
	format    string
	ttl       time.Duration
	maxTTL    time.Duration
	audience  []string
	scopes    []string
	claims    map[string]string
	renewable bool
}

// placeholders may appear in claim values.
var placeholders = []string{"{{identity}}", "{{role}}", "{{mount}}"}

// reserved claims are Sigil's own; a role may not set them.
var reserved = []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope"}

func splitList(v string) []string {
	f := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })
	out := f[:0]
	for _, s := range f {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func parseRole(f map[string]string) (*role, error) {
	r := &role{format: FormatOpaque, ttl: DefaultTTL, maxTTL: DefaultMaxTTL}
	renewable := ""
	for k, v := range f {
		switch k {
		case KeyFormat:
			if v != FormatOpaque && v != FormatJWT {
				return nil, fmt.Errorf("%w: %s %q: use opaque or jwt", engines.ErrInvalidConfig, k, v)
			}
			r.format = v
		case KeyTTL, KeyMaxTTL:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%w: %s must be a positive duration", engines.ErrInvalidConfig, k)
			}
			if k == KeyTTL {
				r.ttl = d
			} else {
				r.maxTTL = d
			}
		case KeyAudience:
			r.audience = splitList(v)
		case KeyScopes:
			r.scopes = splitList(v)
			for _, s := range r.scopes {
				// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
				for _, c := range s {
					if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
						return nil, fmt.Errorf("%w: scope %q has a character RFC 6749 does not allow", engines.ErrInvalidConfig, s)
					}
				}
			}
		case KeyClaims:
			if v == "" {
				continue
			}
			var m map[string]string
			if err := json.Unmarshal([]byte(v), &m); err != nil {
				return nil, fmt.Errorf("%w: %s must be a JSON object of strings: %v", engines.ErrInvalidConfig, k, err)
			}
			for name, val := range m {
				if slices.Contains(reserved, name) {
					return nil, fmt.Errorf("%w: claim %q is set by Sigil", engines.ErrInvalidConfig, name)
				}
				rest := val
				for _, p := range placeholders {
					rest = strings.ReplaceAll(rest, p, "")
				}
				if strings.Contains(rest, "{{") {
					return nil, fmt.Errorf("%w: claim %q: unknown placeholder (use %s)", engines.ErrInvalidConfig, name, strings.Join(placeholders, ", "))
				}
			}
			r.claims = m
		case KeyRenewable:
			if v != "true" && v != "false" {
				return nil, fmt.Errorf("%w: %s must be true or false", engines.ErrInvalidConfig, k)
			}
			renewable = v
		default:
			return nil, fmt.Errorf("%w: unknown role key %q", engines.ErrInvalidConfig, k)
		}
	}
	if r.ttl > r.maxTTL {
		return nil, fmt.Errorf("%w: ttl exceeds max_ttl", engines.ErrInvalidConfig)
	}
	switch {
	case renewable == "" && r.format == FormatOpaque:
		r.renewable = true
	case renewable == "true" && r.format == FormatJWT:
		// A JWT's exp is signed into it: renewing the lease could not move it.
		return nil, fmt.Errorf("%w: jwt tokens cannot be renewable (their exp is signed)", engines.ErrInvalidConfig)
	default:
		r.renewable = renewable == "true"
	}
	return r, nil
}

// ValidateRole implements engines.Leased; defaults are filled so a later
// change of Sigil's defaults does not change existing roles.
func (e *Engine) ValidateRole(_ context.Context, _ string, f map[string]string) (map[string]string, error) {
	r, err := parseRole(f)
	if err != nil {
		return nil, err
	}
	if r.format == FormatJWT && r.maxTTL > e.config().retention {
		return nil, fmt.Errorf("%w: max_ttl %s exceeds the mount's key_retention %s (a retired signing key must outlive its tokens)",
			engines.ErrInvalidConfig, r.maxTTL, e.config().retention)
	}
	out := map[string]string{KeyFormat: r.format, KeyTTL: r.ttl.String(), KeyMaxTTL: r.maxTTL.String(),
		KeyRenewable: strconv.FormatBool(r.renewable)}
	if len(r.audience) > 0 {
		out[KeyAudience] = strings.Join(r.audience, ",")
	}
	if len(r.scopes) > 0 {
		out[KeyScopes] = strings.Join(r.scopes, " ")
	}
	if len(r.claims) > 0 {
		b, _ := json.Marshal(r.claims) // sorted keys: stable
		out[KeyClaims] = string(b)
	}
	return out, nil
}

// record is the revocation data a lease carries (sealed by the lease
// manager): what introspection reports, and for opaque tokens the keyed
// hash the presented token must match.
type record struct {
	Format   string   `json:"format"`
	Hash     []byte   `json:"hash,omitempty"` // opaque: HMAC-SHA-256 of the token
	KID      string   `json:"kid,omitempty"`  // jwt: signing key
	Subject  string   `json:"sub"`
	Audience []string `json:"aud,omitempty"`
	Scopes   []string `json:"scopes,omitempty"`
	Role     string   `json:"role"`
}

// Prepare implements engines.Leased. Everything is decided and signed
// here (signing has no side effects); Create only hands it over.
func (e *Engine) Prepare(ctx context.Context, r engines.Role, req engines.MintRequest) (*engines.Pending, error) {
	ro, err := parseRole(r.Fields)
	if err != nil {
		return nil, err
	}
	if req.LeaseID == "" {
		return nil, fmt.Errorf("%w: tokens need the lease id", engines.ErrInvalidRequest)
	}
	ttl := ro.ttl
	if req.TTL > 0 {
		ttl = req.TTL
	}
	ttl = min(ttl, ro.maxTTL)
	exp := req.Now.Add(ttl)
	rec := record{Format: ro.format, Subject: req.Identity, Audience: ro.audience, Scopes: ro.scopes, Role: r.Name}
	var token string
	switch ro.format {
	case FormatOpaque:
		var secret [32]byte
		_, _ = rand.Read(secret[:])
		token = encodeOpaque(req.LeaseID, secret[:])
		if rec.Hash, err = e.hash(ctx, token); err != nil {
			return nil, err
		}
	case FormatJWT:
		if token, rec.KID, err = e.signJWT(ctx, ro, r.Name, req, exp); err != nil {
			return nil, err
		}
	}
	rev, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	data := map[string]string{"token": token, "token_type": ro.format, "expires_at": exp.UTC().Format(time.RFC3339)}
	if len(ro.scopes) > 0 {
		data["scopes"] = strings.Join(ro.scopes, " ")
	}
	return &engines.Pending{Revocation: rev, ExpiresAt: exp, MaxExpiresAt: req.Now.Add(ro.maxTTL),
		Renewable: ro.renewable, Private: data}, nil
}

// Create implements engines.Leased: the token exists once its lease is
// active; nothing is made elsewhere.
func (e *Engine) Create(_ context.Context, p *engines.Pending) (*engines.Secret, error) {
	data, ok := p.Private.(map[string]string)
	if !ok {
		return nil, fmt.Errorf("%w: not a prepared token", engines.ErrInvalidRequest)
	}
	return &engines.Secret{Data: maps.Clone(data)}, nil
}

// Renew implements engines.Leased: an opaque token lives as long as its
// lease, so there is nothing to move.
func (e *Engine) Renew(context.Context, []byte, time.Time) error { return nil }

// Revoke implements engines.Leased: a revoked lease is an inactive token.
func (e *Engine) Revoke(context.Context, []byte) error { return nil }

// Close implements engines.Engine.
func (e *Engine) Close() error { return nil }

// ---- opaque tokens

var b64 = base64.RawURLEncoding

// encodeOpaque returns sgl_<lease id>.<secret>.<checksum>, each part
// base64url; the checksum (CRC-32 of everything before it) lets scanners
// and the server reject a mistyped token without any lookup.
func encodeOpaque(leaseID string, secret []byte) string {
	body := Prefix + b64.EncodeToString([]byte(leaseID)) + "." + b64.EncodeToString(secret)
	var sum [4]byte
	c := crc32.ChecksumIEEE([]byte(body))
	sum[0], sum[1], sum[2], sum[3] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
	return body + "." + b64.EncodeToString(sum[:])
}

// parseOpaque returns the lease id an opaque token names, after checking
// its form and checksum.
func parseOpaque(tok string) (string, error) {
	if len(tok) > MaxTokenLen || !strings.HasPrefix(tok, Prefix) {
		return "", ErrInactive
	}
	parts := strings.Split(tok[len(Prefix):], ".")
	if len(parts) != 3 {
		return "", ErrInactive
	}
	id, err1 := b64.DecodeString(parts[0])
	secret, err2 := b64.DecodeString(parts[1])
	sum, err3 := b64.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || len(secret) != 32 || len(sum) != 4 || len(id) == 0 {
		return "", ErrInactive
	}
	body := tok[:len(tok)-len(parts[2])-1]
	c := crc32.ChecksumIEEE([]byte(body))
	if sum[0] != byte(c>>24) || sum[1] != byte(c>>16) || sum[2] != byte(c>>8) || sum[3] != byte(c) {
		return "", ErrInactive
	}
	return string(id), nil
}

// hmacKeyName is the mount store key of the token HMAC key.
const hmacKeyName = "hmac-key"

func (e *Engine) hash(ctx context.Context, token string) ([]byte, error) {
	key, err := e.loadHMACKey(ctx)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(token))
	return m.Sum(nil), nil
}

// loadHMACKey returns the mount's token HMAC key, creating it on first use
// (Create, so two nodes racing agree on one key).
func (e *Engine) loadHMACKey(ctx context.Context) ([]byte, error) {
	e.mu.RLock()
	k := e.hmacKey
	e.mu.RUnlock()
	if k != nil {
		return k, nil
	}
	k, err := e.env.Store.Get(ctx, hmacKeyName)
	if errors.Is(err, storage.ErrNotFound) {
		fresh := make([]byte, 32)
		_, _ = rand.Read(fresh)
		err = e.env.Store.Create(ctx, hmacKeyName, fresh)
		if errors.Is(err, storage.ErrConflict) {
			k, err = e.env.Store.Get(ctx, hmacKeyName)
		} else if err == nil {
			k = fresh
		}
	}
	if err != nil {
		return nil, fmt.Errorf("tokens: HMAC key: %w", err)
	}
	if len(k) != 32 {
		return nil, errors.New("tokens: stored HMAC key has the wrong size")
	}
	e.mu.Lock()
	e.hmacKey = k
	e.mu.Unlock()
	return k, nil
}

// ---- JWT signing keys

// keySet is the mount's JWT signing keys, newest last; Active signs.
type keySet struct {
	Keys []*signingKey `json:"keys"`
}

type signingKey struct {
	Name    string      `json:"name"` // custody name (mount-scoped)
	KID     string      `json:"kid"`
	Type    hsm.KeyType `json:"type"`
	Created time.Time   `json:"created"`
	// RetireAt is set when a newer key took over: the key leaves the JWKS
	// then (its tokens have all expired by that time).
	RetireAt time.Time `json:"retire_at,omitzero"`

	pub crypto.PublicKey
}

func (ks *keySet) active() *signingKey {
	if ks == nil || len(ks.Keys) == 0 {
		return nil
	}
	return ks.Keys[len(ks.Keys)-1]
}

func (ks *keySet) byKID(kid string) *signingKey {
	if ks == nil {
		return nil
	}
	for _, k := range ks.Keys {
		if k.KID == kid {
			return k
		}
	}
	return nil
}

const keySetName = "jwt-keys"

// loadKeys returns the key set from the store (nil if none yet) and the raw
// stored value for compare-and-swap.
func (e *Engine) loadKeys(ctx context.Context) (*keySet, []byte, error) {
	raw, err := e.env.Store.Get(ctx, keySetName)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("tokens: signing keys: %w", err)
	}
	ks := &keySet{}
	if err := json.Unmarshal(raw, ks); err != nil {
		return nil, nil, fmt.Errorf("tokens: signing keys: %w", err)
	}
	for _, k := range ks.Keys {
		info, err := e.env.Custody.Key(ctx, k.Name)
		if err != nil {
			return nil, nil, fmt.Errorf("tokens: signing key %s: %w", k.KID, err)
		}
		k.pub = info.Public
	}
	return ks, raw, nil
}

// keys returns the current key set, creating the first key if needed.
// refresh forces a reload (another node may have rotated).
func (e *Engine) keys(ctx context.Context, refresh bool) (*keySet, error) {
	if e.env.Custody == nil {
		return nil, fmt.Errorf("%w: JWT tokens need key custody", engines.ErrNotConfigured)
	}
	e.mu.RLock()
	ks := e.keyset
	e.mu.RUnlock()
	if ks != nil && !refresh {
		return ks, nil
	}
	ks, _, err := e.loadKeys(ctx)
	if err != nil {
		return nil, err
	}
	if ks == nil {
		if ks, err = e.addKey(ctx, time.Now()); err != nil {
			return nil, err
		}
	}
	e.mu.Lock()
	e.keyset = ks
	e.mu.Unlock()
	return ks, nil
}

// addKey creates a signing key in custody and appends it to the stored set
// (retiring the previous active key), retrying on a concurrent change.
func (e *Engine) addKey(ctx context.Context, now time.Time) (*keySet, error) {
	cfg := e.config()
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	// A random name: custody keys are never deleted, and a mount re-enabled
	// at this path must not collide with its predecessor's keys.
	name := "jwt-" + strings.ToLower(strings.TrimRight(base64.StdEncoding.EncodeToString(rnd[:]), "="))
	name = strings.NewReplacer("+", "-", "/", "_").Replace(name)
	info, err := e.env.Custody.CreateKey(ctx, name, cfg.keyType)
	if err != nil {
		return nil, fmt.Errorf("tokens: create signing key: %w", err)
	}
	jwk := jose.JSONWebKey{Key: info.Public}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("tokens: key thumbprint: %w", err)
	}
	nk := &signingKey{Name: name, KID: b64.EncodeToString(tp), Type: cfg.keyType, Created: now.UTC(), pub: info.Public}
	for range 10 {
		ks, raw, err := e.loadKeys(ctx)
		if err != nil {
			return nil, err
		}
		if ks == nil {
			ks = &keySet{}
		}
		var keep []*signingKey
		for _, k := range ks.Keys {
			if k.RetireAt.IsZero() {
				k.RetireAt = now.Add(cfg.retention).UTC()
			}
			if k.RetireAt.After(now) {
				keep = append(keep, k)
			}
		}
		ks.Keys = append(keep, nk)
		b, err := json.Marshal(ks)
		if err != nil {
			return nil, err
		}
		if raw == nil {
			err = e.env.Store.Create(ctx, keySetName, b)
		} else {
			err = e.env.Store.Replace(ctx, keySetName, raw, b)
		}
		if errors.Is(err, storage.ErrConflict) {
			if raw == nil {
				// Another node made the first key meanwhile: use theirs.
				ks, _, err := e.loadKeys(ctx)
				if err == nil && ks != nil {
					return ks, nil
				}
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("tokens: store signing keys: %w", err)
		}
		e.log.Info("JWT signing key added", "kid", nk.KID, "type", nk.Type)
		return ks, nil
	}
	return nil, fmt.Errorf("tokens: signing keys changed concurrently too often: %w", storage.ErrConflict)
}

// RotateRoot implements engines.RootRotator: a new signing key signs from
// now on; the previous one stays in the JWKS for key_retention.
func (e *Engine) RotateRoot(ctx context.Context) (map[string]string, error) {
	if e.env.Custody == nil {
		return nil, fmt.Errorf("%w: JWT tokens need key custody", engines.ErrNotConfigured)
	}
	ks, err := e.addKey(ctx, time.Now())
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.keyset = ks
	cfg := e.cfg
	e.mu.Unlock()
	return map[string]string{KeyJWTKeyType: string(cfg.keyType), KeyIssuer: cfg.issuer, KeyKeyRetention: cfg.retention.String()}, nil
}

type jwtClaims struct {
	jwt.Claims
	Scope string `json:"scope,omitempty"`
}

func (e *Engine) signJWT(ctx context.Context, ro *role, roleName string, req engines.MintRequest, exp time.Time) (string, string, error) {
	ks, err := e.keys(ctx, false)
	if err != nil {
		return "", "", err
	}
	k := ks.active()
	signer, err := e.env.Custody.Signer(ctx, k.Name)
	if err != nil {
		return "", "", fmt.Errorf("tokens: signing key: %w", err)
	}
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.KID)
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(algs[k.Type]), Key: cryptosigner.Opaque(signer)}, opts)
	if err != nil {
		return "", "", fmt.Errorf("tokens: JWT signer: %w", err)
	}
	cfg := e.config()
	std := jwtClaims{Claims: jwt.Claims{
		Issuer: cfg.issuer, Subject: req.Identity, Audience: jwt.Audience(ro.audience), ID: req.LeaseID,
		IssuedAt: jwt.NewNumericDate(req.Now), NotBefore: jwt.NewNumericDate(req.Now), Expiry: jwt.NewNumericDate(exp),
	}, Scope: strings.Join(ro.scopes, " ")}
	extra := map[string]any{}
	subst := strings.NewReplacer("{{identity}}", req.Identity, "{{role}}", roleName, "{{mount}}", e.env.Mount)
	for name, v := range ro.claims {
		extra[name] = subst.Replace(v)
	}
	tok, err := jwt.Signed(js).Claims(std).Claims(extra).Serialize()
	if err != nil {
		return "", "", fmt.Errorf("tokens: sign JWT: %w", err)
	}
	return tok, k.KID, nil
}

// JWKS returns the mount's public signing keys as an RFC 7517 key set:
// the active key and retired keys until their retirement time.
func (e *Engine) JWKS(ctx context.Context) ([]byte, error) {
	ks, err := e.keys(ctx, true)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	set := jose.JSONWebKeySet{}
	for _, k := range ks.Keys {
		if !k.RetireAt.IsZero() && !k.RetireAt.After(now) {
			continue
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.pub, KeyID: k.KID, Algorithm: algs[k.Type], Use: "sig"})
	}
	return json.Marshal(set)
}

// ---- introspection

// LeaseIDOf returns the lease id a token claims, without trusting it: the
// caller loads that lease, then asks the mount's engine to Introspect.
func LeaseIDOf(token string) (string, error) {
	if len(token) > MaxTokenLen {
		return "", ErrInactive
	}
	if strings.HasPrefix(token, Prefix) {
		return parseOpaque(token)
	}
	tok, err := jwt.ParseSigned(token, jwtAlgs)
	if err != nil {
		return "", ErrInactive
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil || c.ID == "" {
		return "", ErrInactive
	}
	return c.ID, nil
}

// Lease is what introspection needs of a lease: the caller passes an
// active, unexpired lease only.
type Lease = engines.ActiveLease

// Introspection is an active token's description (RFC 7662 §2.2).
type Introspection = engines.Introspection

// Introspect checks token against its lease l (nil when the lease does not
// exist or is not active: the work is still done, so the answer takes the
// same time). Any mismatch is ErrInactive.
func (e *Engine) Introspect(ctx context.Context, token string, l *Lease) (*Introspection, error) {
	leaseID, err := LeaseIDOf(token)
	if err != nil {
		return nil, ErrInactive
	}
	var rec record
	if l != nil {
		if err := json.Unmarshal(l.Revocation, &rec); err != nil {
			return nil, fmt.Errorf("tokens: lease %s: %w", l.ID, err)
		}
	}
	switch {
	case strings.HasPrefix(token, Prefix):
		h, err := e.hash(ctx, token)
		if err != nil {
			return nil, err
		}
		ok := hmac.Equal(h, rec.Hash) // constant time; rec.Hash is nil without a lease
		if l == nil || !ok || rec.Format != FormatOpaque || l.ID != leaseID {
			return nil, ErrInactive
		}
	default:
		if err := e.verifyJWT(ctx, token, leaseID); err != nil || l == nil || rec.Format != FormatJWT || l.ID != leaseID {
			return nil, ErrInactive
		}
	}
	if !time.Now().Before(l.ExpiresAt) {
		return nil, ErrInactive
	}
	return &Introspection{TokenType: rec.Format, Subject: rec.Subject, Audience: rec.Audience, Scopes: rec.Scopes,
		IssuedAt: l.IssuedAt, ExpiresAt: l.ExpiresAt, LeaseID: l.ID, Role: rec.Role, Issuer: e.config().issuer}, nil
}

// verifyJWT checks a JWT's signature against the mount's keys (reloading
// them once if the kid is unknown here) and that its jti is leaseID.
func (e *Engine) verifyJWT(ctx context.Context, token, leaseID string) error {
	tok, err := jwt.ParseSigned(token, jwtAlgs)
	if err != nil || len(tok.Headers) != 1 {
		return ErrInactive
	}
	kid := tok.Headers[0].KeyID
	ks, err := e.keys(ctx, false)
	if err != nil {
		return err
	}
	k := ks.byKID(kid)
	if k == nil {
		if ks, err = e.keys(ctx, true); err != nil {
			return err
		}
		if k = ks.byKID(kid); k == nil {
			return ErrInactive
		}
	}
	if tok.Headers[0].Algorithm != algs[k.Type] {
		return ErrInactive
	}
	var c jwt.Claims
	if err := tok.Claims(k.pub, &c); err != nil {
		return ErrInactive
	}
	if c.ID != leaseID || c.Issuer != e.config().issuer {
		return ErrInactive
	}
	return nil
}
