package jwt_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/authmethod/authmethodtest"
	"github.com/sigil-ca/sigil/authmethod/jwt"
)

func TestConformance(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	sign := func(claims map[string]any) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := json.Marshal(claims)
		jws, err := s.Sign(p)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := jws.CompactSerialize()
		return out
	}
	exp := time.Now().Add(time.Hour).Unix()
	authmethodtest.Run(t, authmethodtest.Fixture{
		Type:   jwt.NewType(jwt.KindJWT, nil),
		Config: map[string]string{"jwt_validation_pubkeys": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), "bound_issuer": "https://iss.test"},
		Role:   map[string]string{"bound_audiences": "sigil"},
		Good:   authmethod.Credentials{Role: "r", JWT: sign(map[string]any{"iss": "https://iss.test", "sub": "s", "aud": "sigil", "exp": exp})},
		Bad:    authmethod.Credentials{Role: "r", JWT: sign(map[string]any{"iss": "https://iss.test", "sub": "s", "aud": "other", "exp": exp})},
	})
}
