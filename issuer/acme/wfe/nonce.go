package wfe

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
	"github.com/sigil-ca/sigil/storage"
)

// Nonces are stateless until used: a nonce is
//
//	version(1) ‖ expiry, Unix seconds (8) ‖ random (12) ‖ HMAC-SHA-256(key, label ‖ the above)[:16]
//
// base64url, under a key kept in storage sealed by the barrier, so every
// node on the database mints and accepts the same nonces and a restart does
// not invalidate them. Handing one out costs no storage. Using one records
// it in the nonce table until its expiry (the bounded replay window), and
// that insert, unique on the nonce, is what makes it single use across
// nodes and restarts; Prune deletes the records once they expire.
const (
	nonceVersion   = 1
	nonceRandLen   = 12
	nonceMACLen    = 16
	nonceLen       = 1 + 8 + nonceRandLen + nonceMACLen
	nonceMACLabel  = "sigil acme nonce v1\x00"
	kindNonceKey   = "noncekey"
	nonceKeyID     = "hmac-v1"
	sealKindNonces = "acme-nonce-key"
)

// errBadNonce is a nonce that is malformed, forged, expired or used.
var errBadNonce = errors.New("nonce is unknown, used or expired")

// nonceKeyRecord is the stored key, sealed with (sealKindNonces, id).
type nonceKeyRecord struct {
	Sealed    []byte    `json:"sealed"`
	CreatedAt time.Time `json:"createdAt"`
}

// nonceKey returns the HMAC key, loading it from storage or, on first use
// of the database, creating it. Of nodes racing to create it the first Put
// wins and the others load that one.
func (f *WFE) nonceKey(ctx context.Context) ([]byte, error) {
	f.nkMu.Lock()
	defer f.nkMu.Unlock()
	if f.nk != nil {
		return f.nk, nil
	}
	for range 3 {
		o, err := f.store.ACME().Get(ctx, kindNonceKey, nonceKeyID)
		if err == nil {
			var rec nonceKeyRecord
			if err := json.Unmarshal(o.Data, &rec); err != nil {
				return nil, fmt.Errorf("acme: decoding the nonce key: %w", err)
			}
			key, err := f.sealer.Open(ctx, sealKindNonces, nonceKeyID, rec.Sealed)
			if err != nil {
				return nil, fmt.Errorf("acme: opening the nonce key: %w", err)
			}
			f.nk = key
			return key, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("acme: loading the nonce key: %w", err)
		}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("acme: nonce key: %w", err)
		}
		sealed, err := f.sealer.Seal(ctx, sealKindNonces, nonceKeyID, key)
		if err != nil {
			return nil, fmt.Errorf("acme: sealing the nonce key: %w", err)
		}
		data, err := json.Marshal(&nonceKeyRecord{Sealed: sealed, CreatedAt: f.now()})
		if err != nil {
			return nil, fmt.Errorf("acme: encoding the nonce key: %w", err)
		}
		err = f.store.ACME().Put(ctx, &storage.ACMEObject{Kind: kindNonceKey, ID: nonceKeyID, Status: ra.StatusValid, Data: data})
		if errors.Is(err, storage.ErrConflict) {
			continue // another node created it first: load theirs
		}
		if err != nil {
			return nil, fmt.Errorf("acme: storing the nonce key: %w", err)
		}
		f.nk = key
		return key, nil
	}
	return nil, fmt.Errorf("acme: nonce key: %w", storage.ErrConflict)
}

func nonceMAC(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(nonceMACLabel))
	m.Write(body)
	return m.Sum(nil)[:nonceMACLen]
}

// makeNonce mints a nonce valid for NonceLifetime.
func (f *WFE) makeNonce(ctx context.Context) (string, error) {
	key, err := f.nonceKey(ctx)
	if err != nil {
		return "", err
	}
	b := make([]byte, nonceLen)
	b[0] = nonceVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(f.now().Add(f.cfg.NonceLifetime).Unix()))
	if _, err := rand.Read(b[9 : 9+nonceRandLen]); err != nil {
		return "", fmt.Errorf("acme: nonce: %w", err)
	}
	copy(b[9+nonceRandLen:], nonceMAC(key, b[:9+nonceRandLen]))
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// useNonce checks a nonce and records it as used; errBadNonce if it is
// malformed, forged, expired or already used (on any node).
func (f *WFE) useNonce(ctx context.Context, nonce string) error {
	b, err := base64.RawURLEncoding.DecodeString(nonce)
	if err != nil || len(b) != nonceLen || b[0] != nonceVersion {
		return errBadNonce
	}
	key, err := f.nonceKey(ctx)
	if err != nil {
		return err
	}
	if !hmac.Equal(b[9+nonceRandLen:], nonceMAC(key, b[:9+nonceRandLen])) {
		return errBadNonce
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(b[1:9])), 0).UTC()
	now := f.cfg.Now()
	// The upper bound keeps the replay window at most NonceLifetime even
	// for nonces minted under a longer configured lifetime.
	if !now.Before(exp) || exp.After(now.Add(f.cfg.NonceLifetime+time.Minute)) {
		return errBadNonce
	}
	if err := f.store.ACME().PutNonce(ctx, nonce, exp); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return errBadNonce
		}
		return fmt.Errorf("acme: recording used nonce: %w", err)
	}
	return nil
}
