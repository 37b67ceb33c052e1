package registration

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sigil-ca/sigil/hsm"
)

// JWTKeyName is the custody key that signs JWT-SVIDs. It is made on first
// use (ES256) and never leaves custody.
const JWTKeyName = "agent-jwt-svid"

// DefaultJWTTTL and MaxJWTTTL bound a JWT-SVID's lifetime.
const (
	DefaultJWTTTL = 5 * time.Minute
	MaxJWTTTL     = time.Hour
)

// JWTSigner signs JWT-SVIDs in custody.
type JWTSigner struct {
	custody hsm.Custody
}

// NewJWTSigner returns a signer over custody.
func NewJWTSigner(c hsm.Custody) *JWTSigner { return &JWTSigner{custody: c} }

// key returns the signing key, creating it when absent (a concurrent
// creator's key is used if it wins the race).
func (j *JWTSigner) key(ctx context.Context) (hsm.KeyInfo, error) {
	k, err := j.custody.Key(ctx, JWTKeyName)
	if errors.Is(err, hsm.ErrKeyNotFound) {
		k, err = j.custody.CreateKey(ctx, JWTKeyName, hsm.ECDSAP256)
		if errors.Is(err, hsm.ErrKeyExists) {
			k, err = j.custody.Key(ctx, JWTKeyName)
		}
	}
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("registration: JWT-SVID key: %w", err)
	}
	return k, nil
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
	k, err := j.key(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	id, err := kid(k.Public)
	if err != nil {
		return "", time.Time{}, err
	}
	signer, err := j.custody.Signer(ctx, JWTKeyName)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("registration: JWT-SVID signer: %w", err)
	}
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(signer)},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", id))
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

// JWKS returns the JWT-SVID keys as an RFC 7517 key set with SPIFFE's
// "use": "jwt-svid".
func (j *JWTSigner) JWKS(ctx context.Context) ([]byte, error) {
	k, err := j.key(ctx)
	if err != nil {
		return nil, err
	}
	id, err := kid(k.Public)
	if err != nil {
		return nil, err
	}
	return json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Public, KeyID: id, Algorithm: string(jose.ES256), Use: "jwt-svid"}}})
}

// JWTSVIDBinding is what the envelope of a delivered JWT-SVID is bound to,
// so an envelope for one entry cannot pass for another's.
func JWTSVIDBinding(entryID string) string { return "jwt-svid:" + entryID }
