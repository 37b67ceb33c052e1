package ra

import (
	"crypto"
	"encoding/base64"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// Thumbprint is the RFC 7638 SHA-256 JWK thumbprint, base64url.
func Thumbprint(key *jose.JSONWebKey) (string, error) {
	pub := key.Public()
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("jwk thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

func marshalKey(key *jose.JSONWebKey) ([]byte, error) {
	pub := key.Public()
	b, err := pub.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encoding jwk: %w", err)
	}
	return b, nil
}

// UnmarshalKey decodes a JWK (an account's stored key).
func UnmarshalKey(b []byte) (*jose.JSONWebKey, error) {
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("decoding jwk: %w", err)
	}
	return &k, nil
}
