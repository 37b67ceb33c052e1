package registration

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// JWTKeyName is the custody key that signed JWT-SVIDs first; its
// successors are JWTKeyName.2, JWTKeyName.3, … Keys are made in custody
// (ES256) and never leave it.
const JWTKeyName = "agent-jwt-svid"

// DefaultJWTTTL and MaxJWTTTL bound a JWT-SVID's lifetime.
const (
	DefaultJWTTTL = 5 * time.Minute
	MaxJWTTTL     = time.Hour
)

// JWT-SVID key rotation, like SPIRE's JWT key manager: a successor is
// prepared (made and published in the key set, not yet used) Lead before
// the active key's time is up, so every agent has it in its bundle before
// the first token it signs; the predecessor stays published until no token
// it signed can still be valid.
const (
	// DefaultJWTKeyRotation is how long a key signs before its successor
	// takes over.
	DefaultJWTKeyRotation = 7 * 24 * time.Hour
	// DefaultJWTKeyLead is how long a successor is published before use;
	// agents fetch the bundle every sync interval (seconds to minutes).
	DefaultJWTKeyLead = time.Hour
	// jwtKeyRetireMargin is added to MaxJWTTTL before a replaced key leaves
	// the key set: clock skew, and the ring cache of other nodes.
	jwtKeyRetireMargin = 5 * time.Minute
	// jwtRingCacheTTL bounds how long a node signs from its cached ring;
	// far below the lead, so a successor a peer prepared is seen in time.
	jwtRingCacheTTL = 30 * time.Second
	// jwtRingSetting is the settings key of the ring.
	jwtRingSetting = "registration/jwt-svid-keys"
)

// RingStore keeps the key ring (storage.Settings satisfies it).
type RingStore interface {
	Get(ctx context.Context, key string) ([]byte, error)
	PutIfAbsent(ctx context.Context, key string, value []byte) error
	Replace(ctx context.Context, key string, old, new []byte) error
}

// JWTKeyPolicy sets the rotation schedule; zero fields take the defaults.
type JWTKeyPolicy struct {
	Rotation time.Duration
	Lead     time.Duration
	// Logger hears of retired keys custody could not destroy (nil:
	// discarded).
	Logger *slog.Logger
}

// jwtRing is the stored record of the JWT-SVID keys, oldest first. The
// active key is the newest whose ActiveFrom has passed; every key in the
// ring is published.
type jwtRing struct {
	Keys []jwtRingKey `json:"keys"`
}

type jwtRingKey struct {
	Name       string    `json:"name"`
	Created    time.Time `json:"created"`
	ActiveFrom time.Time `json:"active_from"`
}

// JWTSigner signs JWT-SVIDs in custody and rotates their key.
type JWTSigner struct {
	custody hsm.Custody
	store   RingStore
	policy  JWTKeyPolicy

	mu       sync.Mutex
	raw      []byte // the ring as stored, for Replace
	ring     *jwtRing
	loadedAt time.Time

	// known caches each key's public half and key id by custody name:
	// custody never replaces a key under a name, so the entry never goes
	// stale, and bundle syncs and mints need not read custody for it.
	knownMu sync.Mutex
	known   map[string]knownKey
}

type knownKey struct {
	pub crypto.PublicKey
	kid string
}

// NewJWTSigner returns a signer over custody keeping its key ring in store.
func NewJWTSigner(c hsm.Custody, store RingStore, p JWTKeyPolicy) *JWTSigner {
	if p.Rotation <= 0 {
		p.Rotation = DefaultJWTKeyRotation
	}
	if p.Lead <= 0 || p.Lead >= p.Rotation {
		p.Lead = min(DefaultJWTKeyLead, p.Rotation/2)
	}
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	return &JWTSigner{custody: c, store: store, policy: p}
}

// current returns the ring as of now, having made the changes now calls
// for (a first key, a prepared successor, retired keys dropped).
func (j *JWTSigner) current(ctx context.Context, now time.Time) (*jwtRing, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for range 5 {
		if j.ring == nil || now.Sub(j.loadedAt) >= jwtRingCacheTTL || now.Before(j.loadedAt) {
			if err := j.load(ctx, now); err != nil {
				return nil, err
			}
		}
		next, changed, err := j.maintain(ctx, j.ring, now)
		if err != nil {
			return nil, err
		}
		if !changed {
			return j.ring, nil
		}
		switch ok, err := j.swap(ctx, next, now); {
		case err != nil:
			return nil, err
		case ok:
			return next, nil
		}
		j.ring = nil // a peer changed it first: start again from theirs
	}
	return nil, fmt.Errorf("registration: JWT-SVID key ring kept changing under us: %w", storage.ErrConflict)
}

// load reads the ring, creating it on first use. A key made before rings
// existed (JWTKeyName alone) is adopted, so its tokens stay valid.
func (j *JWTSigner) load(ctx context.Context, now time.Time) error {
	raw, err := j.store.Get(ctx, jwtRingSetting)
	if errors.Is(err, storage.ErrNotFound) {
		if _, err := j.ensureKey(ctx, JWTKeyName); err != nil {
			return err
		}
		raw, err = json.Marshal(jwtRing{Keys: []jwtRingKey{{Name: JWTKeyName, Created: now, ActiveFrom: now}}})
		if err != nil {
			return fmt.Errorf("registration: JWT-SVID key ring: %w", err)
		}
		if err := j.store.PutIfAbsent(ctx, jwtRingSetting, raw); errors.Is(err, storage.ErrConflict) {
			raw, err = j.store.Get(ctx, jwtRingSetting)
			if err != nil {
				return fmt.Errorf("registration: JWT-SVID key ring: %w", err)
			}
		} else if err != nil {
			return fmt.Errorf("registration: JWT-SVID key ring: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("registration: JWT-SVID key ring: %w", err)
	}
	var r jwtRing
	if err := json.Unmarshal(raw, &r); err != nil || len(r.Keys) == 0 {
		return fmt.Errorf("registration: JWT-SVID key ring is corrupt (%v)", err)
	}
	j.raw, j.ring, j.loadedAt = raw, &r, now
	return nil
}

// maintain returns r as it should be at now: with a successor prepared once
// the active key is within Lead of its rotation, and without the keys whose
// successor has been active longer than any token lives.
func (j *JWTSigner) maintain(ctx context.Context, r *jwtRing, now time.Time) (*jwtRing, bool, error) {
	next := &jwtRing{Keys: slices.Clone(r.Keys)}
	changed := false
	for len(next.Keys) > 1 && !now.Before(next.Keys[1].ActiveFrom.Add(MaxJWTTTL+jwtKeyRetireMargin)) {
		next.Keys, changed = next.Keys[1:], true
	}
	newest := next.Keys[len(next.Keys)-1]
	if !now.Before(newest.ActiveFrom) && !now.Before(newest.ActiveFrom.Add(j.policy.Rotation-j.policy.Lead)) {
		name := fmt.Sprintf("%s.%d", JWTKeyName, generation(newest.Name)+1)
		if _, err := j.ensureKey(ctx, name); err != nil {
			return nil, false, err
		}
		next.Keys, changed = append(next.Keys, jwtRingKey{Name: name, Created: now, ActiveFrom: now.Add(j.policy.Lead)}), true
	}
	return next, changed, nil
}

// JWTKeyInfo describes one published JWT-SVID key.
type JWTKeyInfo struct {
	KID        string
	Name       string
	ActiveFrom time.Time
	Active     bool // the key that signs now
	pub        crypto.PublicKey
}

// Rotate makes a new key active at now, outside the schedule (a suspected
// compromise). A prepared successor that never signed is dropped; with
// retirePrevious every older key leaves the key set at once, and their
// tokens stop validating as agents sync the bundle. It returns the key set.
func (j *JWTSigner) Rotate(ctx context.Context, now time.Time, retirePrevious bool) ([]JWTKeyInfo, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for range 5 {
		if err := j.load(ctx, now); err != nil {
			return nil, err
		}
		keys := slices.DeleteFunc(slices.Clone(j.ring.Keys), func(k jwtRingKey) bool { return now.Before(k.ActiveFrom) })
		gen := 0
		for _, k := range j.ring.Keys {
			gen = max(gen, generation(k.Name))
		}
		name := fmt.Sprintf("%s.%d", JWTKeyName, gen+1)
		if _, err := j.ensureKey(ctx, name); err != nil {
			return nil, err
		}
		if retirePrevious {
			keys = nil
		}
		next := &jwtRing{Keys: append(keys, jwtRingKey{Name: name, Created: now, ActiveFrom: now})}
		switch ok, err := j.swap(ctx, next, now); {
		case err != nil:
			return nil, err
		case ok:
			return j.describe(ctx, next, now)
		}
		// A peer changed the ring: rotate on top of theirs.
	}
	return nil, fmt.Errorf("registration: JWT-SVID key ring kept changing under us: %w", storage.ErrConflict)
}

// swap stores next in place of the ring j loaded, then destroys the keys
// next dropped; false if a peer changed it first. Caller holds mu.
func (j *JWTSigner) swap(ctx context.Context, next *jwtRing, now time.Time) (bool, error) {
	raw, err := json.Marshal(next)
	if err != nil {
		return false, fmt.Errorf("registration: JWT-SVID key ring: %w", err)
	}
	switch err := j.store.Replace(ctx, jwtRingSetting, j.raw, raw); {
	case err == nil:
		prev := j.ring
		j.raw, j.ring, j.loadedAt = raw, next, now
		j.destroyDropped(ctx, prev, next)
		return true, nil
	case errors.Is(err, storage.ErrConflict) || errors.Is(err, storage.ErrNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("registration: JWT-SVID key ring: %w", err)
	}
}

// destroyDropped destroys in custody the keys prev had and next has not:
// retired keys (no token they signed is still valid, and no node signs
// with them) and a prepared successor Rotate dropped before it signed.
// Only the node whose swap stored next gets here, so each key is destroyed
// once. A failure leaves an unused key behind; it is logged, not returned.
// Caller holds mu.
func (j *JWTSigner) destroyDropped(ctx context.Context, prev, next *jwtRing) {
	d, ok := j.custody.(hsm.KeyDestroyer)
	if !ok || prev == nil {
		return
	}
	for _, k := range prev.Keys {
		// Only names this signer makes: a ring record edited in the
		// database must not get another custody key (a CA's) destroyed.
		if !isJWTKeyName(k.Name) || slices.ContainsFunc(next.Keys, func(n jwtRingKey) bool { return n.Name == k.Name }) {
			continue
		}
		if err := d.DestroyKey(ctx, k.Name); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
			j.policy.Logger.WarnContext(ctx, "registration: retired JWT-SVID key left in custody", "key", k.Name, "error", err)
			continue
		}
		j.knownMu.Lock()
		delete(j.known, k.Name)
		j.knownMu.Unlock()
	}
}

// describe lists r's keys with their key ids. A key other than the active
// one that custody no longer has was retired and destroyed by a peer while
// this node's ring was cached: it is left out.
func (j *JWTSigner) describe(ctx context.Context, r *jwtRing, now time.Time) ([]JWTKeyInfo, error) {
	active := r.active(now).Name
	var out []JWTKeyInfo
	for _, rk := range r.Keys {
		k, err := j.publicKey(ctx, rk.Name)
		if errors.Is(err, hsm.ErrKeyNotFound) && rk.Name != active {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, JWTKeyInfo{KID: k.kid, Name: rk.Name, ActiveFrom: rk.ActiveFrom, Active: rk.Name == active, pub: k.pub})
	}
	return out, nil
}

// publicKey returns the named custody key's public half and key id.
func (j *JWTSigner) publicKey(ctx context.Context, name string) (knownKey, error) {
	j.knownMu.Lock()
	k, ok := j.known[name]
	j.knownMu.Unlock()
	if ok {
		return k, nil
	}
	info, err := j.custody.Key(ctx, name)
	if err != nil {
		return knownKey{}, fmt.Errorf("registration: JWT-SVID key %s: %w", name, err)
	}
	id, err := kid(info.Public)
	if err != nil {
		return knownKey{}, err
	}
	k = knownKey{pub: info.Public, kid: id}
	j.knownMu.Lock()
	if j.known == nil {
		j.known = map[string]knownKey{}
	}
	j.known[name] = k
	j.knownMu.Unlock()
	return k, nil
}

// isJWTKeyName reports whether name is JWTKeyName or JWTKeyName.N (N ≥ 2).
func isJWTKeyName(name string) bool {
	if name == JWTKeyName {
		return true
	}
	n, ok := strings.CutPrefix(name, JWTKeyName+".")
	g, err := strconv.Atoi(n)
	return ok && err == nil && g >= 2 && strconv.Itoa(g) == n
}

// generation is 1 for JWTKeyName and N for JWTKeyName.N.
func generation(name string) int {
	if n, err := strconv.Atoi(strings.TrimPrefix(name, JWTKeyName+".")); err == nil {
		return n
	}
	return 1
}

// ensureKey returns the named custody key, creating it if absent (a node
// that made it and then lost the race to record it left it there).
func (j *JWTSigner) ensureKey(ctx context.Context, name string) (hsm.KeyInfo, error) {
	k, err := j.custody.Key(ctx, name)
	if errors.Is(err, hsm.ErrKeyNotFound) {
		k, err = j.custody.CreateKey(ctx, name, hsm.ECDSAP256)
		if errors.Is(err, hsm.ErrKeyExists) {
			k, err = j.custody.Key(ctx, name)
		}
	}
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("registration: JWT-SVID key %s: %w", name, err)
	}
	return k, nil
}

// active is the key that signs at now: the newest already active.
func (r *jwtRing) active(now time.Time) jwtRingKey {
	for i := len(r.Keys) - 1; i > 0; i-- {
		if !now.Before(r.Keys[i].ActiveFrom) {
			return r.Keys[i]
		}
	}
	return r.Keys[0]
}

func kid(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("registration: key id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// Sign returns a JWT-SVID for subject with audience, valid for ttl
// (DefaultJWTTTL when 0, at most MaxJWTTTL).
func (j *JWTSigner) Sign(ctx context.Context, subject string, audience []string, ttl time.Duration, now time.Time) (string, time.Time, error) {
	if len(audience) == 0 {
		return "", time.Time{}, invalid("a JWT-SVID needs an audience")
	}
	if ttl <= 0 {
		ttl = DefaultJWTTTL
	}
	ttl = min(ttl, MaxJWTTTL)
	k, signer, err := j.activeSigner(ctx, now)
	if err != nil {
		return "", time.Time{}, err
	}
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(signer)},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.kid))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("registration: JWT-SVID signer: %w", err)
	}
	exp := now.Add(ttl)
	tok, err := jwt.Signed(js).Claims(jwt.Claims{Subject: subject, Audience: jwt.Audience(audience),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp)}).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("registration: sign JWT-SVID: %w", err)
	}
	return tok, exp, nil
}

// activeSigner returns the key that signs at now. If custody no longer has
// it, a peer rotated with retirePrevious and destroyed it while this node's
// ring was cached: the ring is read again, once.
func (j *JWTSigner) activeSigner(ctx context.Context, now time.Time) (knownKey, crypto.Signer, error) {
	for attempt := 0; ; attempt++ {
		r, err := j.current(ctx, now)
		if err != nil {
			return knownKey{}, nil, err
		}
		name := r.active(now).Name
		k, err := j.publicKey(ctx, name)
		var signer crypto.Signer
		if err == nil {
			if signer, err = j.custody.Signer(ctx, name); err != nil {
				err = fmt.Errorf("registration: JWT-SVID signer: %w", err)
			}
		}
		if errors.Is(err, hsm.ErrKeyNotFound) && attempt == 0 {
			j.mu.Lock()
			j.ring = nil
			j.mu.Unlock()
			continue
		}
		if err != nil {
			return knownKey{}, nil, err
		}
		return k, signer, nil
	}
}

// JWKS returns the published JWT-SVID keys at now (the active one, a
// prepared successor, predecessors whose tokens may still be valid) as an
// RFC 7517 key set with SPIFFE's "use": "jwt-svid".
func (j *JWTSigner) JWKS(ctx context.Context, now time.Time) ([]byte, error) {
	r, err := j.current(ctx, now)
	if err != nil {
		return nil, err
	}
	keys, err := j.describe(ctx, r, now)
	if err != nil {
		return nil, err
	}
	set := jose.JSONWebKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.pub, KeyID: k.KID, Algorithm: string(jose.ES256), Use: "jwt-svid"})
	}
	return json.Marshal(set)
}

// JWTSVIDBinding is what the envelope of a delivered JWT-SVID is bound to,
// so an envelope for one entry cannot pass for another's.
func JWTSVIDBinding(entryID string) string { return "jwt-svid:" + entryID }
