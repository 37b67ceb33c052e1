// Package auth authenticates callers of Sigil's API. It issues and verifies
// bearer tokens, which are stored only as keyed hashes (HMAC-SHA-256 under a
// key that is itself sealed by the barrier), so a copy of the database does
// not yield a usable token.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// TokenPrefix marks Sigil API tokens so secret scanners can recognise them.
const TokenPrefix = "sgt_"

// RootTokenID is the stored ID of the root token.
const RootTokenID = "root"

// RootPolicy is the policy name that grants everything.
const RootPolicy = "root"

// maxTokenLen bounds untrusted input before any work is done on it.
const maxTokenLen = 256

// settingHMACKey names the setting that holds the sealed HMAC key.
const settingHMACKey = "auth.token_hmac_key"

// SettingKind is the barrier kind of sealed settings; the id is the key.
const SettingKind = "setting"

// SealedSettings lists the settings auth stores sealed, so a rewrap can
// find them.
func SealedSettings() []string { return []string{settingHMACKey} }

// Errors callers branch on.
var (
	ErrInvalidToken = errors.New("invalid or expired token")
	// ErrWrongPurpose: a special-purpose token (join, wrapping) presented
	// where another kind is expected. Its use is not spent.
	ErrWrongPurpose = errors.New("token is for another purpose")
)

// PurposeMeta is the metadata key naming a special-purpose token's use;
// API tokens have none.
const PurposeMeta = "purpose"

// Sealer seals and opens small secrets bound to a record; the barrier
// implements it.
type Sealer interface {
	Seal(ctx context.Context, kind, id string, plaintext []byte) ([]byte, error)
	Open(ctx context.Context, kind, id string, sealed []byte) ([]byte, error)
}

// Store is the storage auth needs.
type Store interface {
	Tokens() storage.Tokens
	Settings() storage.Settings
}

// Identity is an authenticated caller.
type Identity struct {
	// Name identifies the caller in logs and audit: "token:<id>" or
	// "spiffe://…".
	Name     string
	TokenID  string
	Policies []string
	// SPIFFEID is set for a workload that authenticated with its X.509-SVID.
	SPIFFEID string
	// SVIDRequester is, for an SVID identity, who the inventory records
	// had the presented SVID issued: core tells from it the SVIDs bound to
	// a lease or a registration entry, which may not renew themselves.
	SVIDRequester string
	// Meta is the token's metadata (for example what a join token enrolls).
	Meta map[string]string
	// ExpiresAt is the token's expiry, or the SVID's NotAfter (zero:
	// none). A child token never outlives it.
	ExpiresAt time.Time
	// UsesLeft is how many uses the token has left after this one (0:
	// unlimited); -1 when this call spent the last. A child token never
	// gets more.
	UsesLeft int
}

// IsRoot reports whether the identity holds the root policy.
func (id *Identity) IsRoot() bool {
	for _, p := range id.Policies {
		if p == RootPolicy {
			return true
		}
	}
	return false
}

// Tokens issues and verifies API tokens.
type Tokens struct {
	store  Store
	sealer Sealer
	now    func() time.Time

	mu  sync.Mutex
	key []byte // HMAC key, loaded once

	// cache holds recently verified unlimited-use API tokens by hash, so a
	// busy client costs one HMAC per call instead of a storage query.
	// Deletions through this Tokens evict at once; a deletion on another
	// node takes effect here within tokenCacheTTL.
	cacheMu sync.Mutex
	cache   map[string]cachedToken
	// cacheGen counts evictions: a verification caches the record it read
	// only if no eviction happened since its read began, so a record read
	// just before a deletion is never cached after it.
	cacheGen uint64
}

type cachedToken struct {
	rec     *storage.Token
	fetched time.Time
}

// tokenCacheTTL bounds how long a token deleted on another node of a shared
// PostgreSQL store may still be accepted here.
const tokenCacheTTL = time.Second

// tokenCacheMax bounds the cache; when full it is emptied (a burst of
// distinct tokens then costs storage queries, never memory).
const tokenCacheMax = 10000

// NewTokens returns a token service.
func NewTokens(store Store, sealer Sealer) *Tokens {
	return &Tokens{store: store, sealer: sealer, now: time.Now, cache: map[string]cachedToken{}}
}

// Delete removes a token; ErrNotFound (from storage) if absent. Every
// deletion goes through here so the verification cache forgets it.
func (t *Tokens) Delete(ctx context.Context, id string) error {
	t.evict(id)
	err := t.store.Tokens().Delete(ctx, id)
	// Evict again: a verification racing with the delete may have cached
	// the record it read just before, and one still reading will not
	// cache it (cacheGen).
	t.evict(id)
	return err
}

func (t *Tokens) evict(id string) {
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	t.cacheGen++
	for h, c := range t.cache {
		if c.rec.ID == id {
			delete(t.cache, h)
		}
	}
}

// lookup returns the token stored under hash h, from the cache when fresh.
func (t *Tokens) lookup(ctx context.Context, h []byte) (*storage.Token, error) {
	now := t.now()
	t.cacheMu.Lock()
	c, ok := t.cache[string(h)]
	gen := t.cacheGen
	t.cacheMu.Unlock()
	if ok && now.Sub(c.fetched) < tokenCacheTTL {
		return c.rec, nil
	}
	rec, err := t.store.Tokens().GetByHash(ctx, h)
	if err != nil {
		return nil, err
	}
	// Only unlimited-use tokens: a counted use must reach storage.
	if rec.UsesLeft == 0 {
		t.cacheMu.Lock()
		if gen == t.cacheGen {
			if len(t.cache) >= tokenCacheMax {
				clear(t.cache)
			}
			t.cache[string(h)] = cachedToken{rec: rec, fetched: now}
		}
		t.cacheMu.Unlock()
	}
	return rec, nil
}

func (t *Tokens) hmacKey(ctx context.Context) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.key != nil {
		return t.key, nil
	}
	sealed, err := t.store.Settings().Get(ctx, settingHMACKey)
	if errors.Is(err, storage.ErrNotFound) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		sealed, err = t.sealer.Seal(ctx, SettingKind, settingHMACKey, key)
		if err != nil {
			return nil, fmt.Errorf("seal token key: %w", err)
		}
		err = t.store.Settings().PutIfAbsent(ctx, settingHMACKey, sealed)
		if errors.Is(err, storage.ErrConflict) {
			// Another node created it first: use theirs.
			sealed, err = t.store.Settings().Get(ctx, settingHMACKey)
		}
		if err != nil {
			return nil, fmt.Errorf("store token key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("load token key: %w", err)
	}
	key, err := t.sealer.Open(ctx, SettingKind, settingHMACKey, sealed)
	if err != nil {
		return nil, fmt.Errorf("open token key: %w", err)
	}
	t.key = key
	return key, nil
}

func (t *Tokens) hash(ctx context.Context, token string) ([]byte, error) {
	key, err := t.hmacKey(ctx)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(token))
	return m.Sum(nil), nil
}

// CreateOptions describes a new token.
type CreateOptions struct {
	ID       string // empty: random
	Policies []string
	TTL      time.Duration // 0: no expiry
	// MaxTTL, when above TTL (and TTL is set), makes the token renewable
	// up to CreatedAt+MaxTTL (CreateLeased registers its lease so); a
	// renewal without an increment then extends by TTL.
	MaxTTL time.Duration
	Uses   int // 0: unlimited
	Meta   map[string]string
}

// MetaRenewIncrement is the metadata key holding a renewable token's
// default renewal increment (its original TTL), in seconds.
const MetaRenewIncrement = "renew_increment"

// Create makes a new token and returns its secret, which is shown once and
// never stored.
func (t *Tokens) Create(ctx context.Context, opts CreateOptions) (string, *storage.Token, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return "", nil, err
	}
	token := TokenPrefix + base64.RawURLEncoding.EncodeToString(secret)
	h, err := t.hash(ctx, token)
	if err != nil {
		return "", nil, err
	}
	id := opts.ID
	if id == "" {
		b := make([]byte, 12)
		if _, err := rand.Read(b); err != nil {
			return "", nil, err
		}
		id = hex.EncodeToString(b)
	}
	now := t.now().UTC()
	meta := opts.Meta
	if opts.TTL > 0 && opts.MaxTTL > opts.TTL {
		// A copy: the caller's map is not ours to change.
		meta = make(map[string]string, len(opts.Meta)+1)
		for k, v := range opts.Meta {
			meta[k] = v
		}
		meta[MetaRenewIncrement] = strconv.FormatInt(int64(opts.TTL/time.Second), 10)
	}
	rec := &storage.Token{ID: id, Hash: h, Policies: opts.Policies, Meta: meta, UsesLeft: opts.Uses, CreatedAt: now}
	if opts.TTL > 0 {
		rec.ExpiresAt = now.Add(opts.TTL)
	}
	if err := t.store.Tokens().Put(ctx, rec); err != nil {
		return "", nil, fmt.Errorf("store token: %w", err)
	}
	return token, rec, nil
}

// Verify authenticates a presented API token.
func (t *Tokens) Verify(ctx context.Context, token string) (*Identity, error) {
	return t.VerifyPurpose(ctx, token, "")
}

// VerifyPurpose authenticates a token made for purpose ("" for API tokens),
// spending one use only if the purpose matches.
func (t *Tokens) VerifyPurpose(ctx context.Context, token, purpose string) (*Identity, error) {
	rec, err := t.check(ctx, token, purpose)
	if err != nil {
		return nil, err
	}
	return t.Spend(ctx, &CheckedToken{rec: rec})
}

// CheckedToken is an API token found valid by Check, before anything was
// spent: what the server's early gate hands on to authentication.
type CheckedToken struct{ rec *storage.Token }

// Check finds token and reports whether it is a valid API token
// (ErrInvalidToken, ErrWrongPurpose otherwise) without spending a use: the
// server's early gate, which runs before a request body is read, calls it,
// and authentication then calls Spend with the result, once the call
// proceeds. An unlimited token costs one HMAC and a cache hit.
func (t *Tokens) Check(ctx context.Context, token string) (*CheckedToken, error) {
	rec, err := t.check(ctx, token, "")
	if err != nil {
		return nil, err
	}
	return &CheckedToken{rec: rec}, nil
}

// Spend authenticates the holder of a checked token, spending one use of a
// limited token (a conditional write that fails once the uses are gone).
// The token is not looked up again: Check did that moments before, on the
// same call; only its expiry is looked at again.
func (t *Tokens) Spend(ctx context.Context, c *CheckedToken) (*Identity, error) {
	rec := c.rec
	if !rec.ExpiresAt.IsZero() && !t.now().Before(rec.ExpiresAt) {
		return nil, ErrInvalidToken
	}
	if rec.UsesLeft > 0 {
		if err := t.store.Tokens().Use(ctx, rec.ID); err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return nil, ErrInvalidToken
			}
			return nil, fmt.Errorf("use token: %w", err)
		}
	}
	left := 0
	if rec.UsesLeft > 0 {
		// rec is the record before this use was spent.
		left = rec.UsesLeft - 1
		if left == 0 {
			left = -1
		}
	}
	return &Identity{Name: "token:" + rec.ID, TokenID: rec.ID, Policies: rec.Policies, Meta: rec.Meta,
		ExpiresAt: rec.ExpiresAt, UsesLeft: left}, nil
}

// check finds and validates token for purpose; it spends nothing.
func (t *Tokens) check(ctx context.Context, token, purpose string) (*storage.Token, error) {
	if len(token) > maxTokenLen || !strings.HasPrefix(token, TokenPrefix) {
		return nil, ErrInvalidToken
	}
	h, err := t.hash(ctx, token)
	if err != nil {
		return nil, err
	}
	rec, err := t.lookup(ctx, h)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrInvalidToken
	}
	if err != nil {
		return nil, fmt.Errorf("look up token: %w", err)
	}
	// The lookup was by hash already; compare again in constant time so
	// correctness never rests on the database's comparison.
	if subtle.ConstantTimeCompare(rec.Hash, h) != 1 {
		return nil, ErrInvalidToken
	}
	if !rec.ExpiresAt.IsZero() && !t.now().Before(rec.ExpiresAt) {
		return nil, ErrInvalidToken
	}
	if rec.Meta[PurposeMeta] != purpose {
		return nil, ErrWrongPurpose
	}
	return rec, nil
}

// EnsureRoot returns a working root token. If existing is non-empty it must
// verify as the root token, and is returned unchanged; otherwise any old root
// token is replaced by a new one.
func (t *Tokens) EnsureRoot(ctx context.Context, existing string) (string, error) {
	if existing != "" {
		id, err := t.Verify(ctx, existing)
		if err != nil || id.TokenID != RootTokenID {
			return "", errors.New("the saved root token does not match this data directory's store")
		}
		return existing, nil
	}
	if err := t.Delete(ctx, RootTokenID); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return "", fmt.Errorf("replace root token: %w", err)
	}
	tok, _, err := t.Create(ctx, CreateOptions{ID: RootTokenID, Policies: []string{RootPolicy}})
	return tok, err
}
