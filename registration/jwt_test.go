package registration_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/registration"
)

// TestJWTSigner signs in both custody implementations (the sealed software
// keystore and PKCS#11 on SoftHSM): the key is made on first use and kept,
// and go-spiffe validates the JWT-SVID against the JWKS.
func TestJWTSigner(t *testing.T) {
	custodies := []struct {
		name string
		open func(t *testing.T) hsm.Custody
	}{
		{"soft", func(t *testing.T) hsm.Custody {
			_, b := barriertest.New(t)
			return hsm.NewSoft(hsmtest.NewMemBlobStore(), b, nil)
		}},
		{"pkcs11", func(t *testing.T) hsm.Custody {
			p, err := hsm.OpenPKCS11(context.Background(), hsmtest.NewSoftHSMToken(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}},
	}
	td := spiffeid.RequireTrustDomainFromString("sigil.test")
	for _, c := range custodies {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			cust := c.open(t)
			defer cust.Close()
			s := registration.NewJWTSigner(cust)
			now := time.Now()
			tok, exp, err := s.Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, 0, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := exp.Sub(now); got != registration.DefaultJWTTTL {
				t.Errorf("lifetime %v, want %v", got, registration.DefaultJWTTTL)
			}
			jwks, err := s.JWKS(ctx)
			if err != nil {
				t.Fatal(err)
			}
			b, err := jwtbundle.Parse(td, jwks)
			if err != nil {
				t.Fatal(err)
			}
			svid, err := jwtsvid.ParseAndValidate(tok, b, []string{"db"})
			if err != nil || svid.ID.String() != "spiffe://sigil.test/app" {
				t.Fatalf("validate: %v %v", svid, err)
			}
			if _, err := jwtsvid.ParseAndValidate(tok, b, []string{"other"}); err == nil {
				t.Error("validated for another audience")
			}
			// The key persists: a second signer over the same custody signs
			// with the same key.
			tok2, exp2, err := registration.NewJWTSigner(cust).Sign(ctx, "spiffe://sigil.test/app", []string{"db"}, time.Hour*2, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := exp2.Sub(now); got != registration.MaxJWTTTL {
				t.Errorf("asked for 2h, got %v; want the cap %v", got, registration.MaxJWTTTL)
			}
			if _, err := jwtsvid.ParseAndValidate(tok2, b, []string{"db"}); err != nil {
				t.Fatalf("second signer: %v", err)
			}
			if _, _, err := s.Sign(ctx, "spiffe://sigil.test/app", nil, 0, now); err == nil {
				t.Error("signed without an audience")
			}
		})
	}
}
