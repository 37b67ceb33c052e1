package authmethod_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/authmethod/jwt"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage"
)

type fixture struct {
	m   *authmethod.Manager
	st  storage.Store
	key *ecdsa.PrivateKey
	pem string
}

func newFixture(t *testing.T, fails *authmethod.FailureLimiter) *fixture {
	t.Helper()
	st, b := barriertest.New(t)
	reg, err := authmethod.NewRegistry(jwt.NewType(jwt.KindJWT, nil))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	f := &fixture{st: st, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		m: authmethod.NewManager(authmethod.Options{Settings: st.Settings(), Sealer: b, Registry: reg, Failures: fails})}
	t.Cleanup(func() { _ = f.m.Close() })
	ctx := context.Background()
	if err := f.m.Enable(ctx, "jwt", "jwt"); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Configure(ctx, "jwt", map[string]string{"jwt_validation_pubkeys": f.pem, "bound_issuer": "https://issuer.test"}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.key}, nil)
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

func claims(extra map[string]any) map[string]any {
	c := map[string]any{"iss": "https://issuer.test", "sub": "alice", "aud": "sigil", "exp": time.Now().Add(time.Minute).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// TestRecordsSealed: configs, roles and groups are stored sealed by the
// barrier: the database holds none of their plaintext.
func TestRecordsSealed(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	if err := f.m.WriteRole(ctx, "jwt", "r", map[string]string{"bound_audiences": "sigil-audience-marker", "token_policies": "p1"}); err != nil {
		t.Fatal(err)
	}
	if err := f.m.WriteGroup(ctx, "jwt", "ops", map[string]string{"token_policies": "ops-policy-marker"}); err != nil {
		t.Fatal(err)
	}
	keys, err := f.st.Settings().List(ctx, "authmethod/")
	if err != nil || len(keys) != 3 {
		t.Fatalf("settings %v %v, want mount, role and group", keys, err)
	}
	for _, k := range keys {
		v, err := f.st.Settings().Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, marker := range []string{"sigil-audience-marker", "ops-policy-marker", "PUBLIC KEY", "issuer.test"} {
			if strings.Contains(string(v), marker) {
				t.Fatalf("%s stores %q in the clear", k, marker)
			}
		}
	}
	got, err := f.m.ReadRole(ctx, "jwt", "r")
	if err != nil || got["bound_audiences"] != "sigil-audience-marker" || got["token_policies"] != "p1" {
		t.Fatalf("ReadRole = %v, %v", got, err)
	}
}

func TestRoleValidation(t *testing.T) {
	f := newFixture(t, nil)
	for _, tt := range []struct {
		name   string
		fields map[string]string
		want   string
	}{
		{"no bounds", map[string]string{"token_policies": "p"}, "needs at least one of bound_audiences"},
		{"unknown key", map[string]string{"bound_audiences": "a", "bogus": "1"}, `role key "bogus" is unknown`},
		{"bad bound_claims", map[string]string{"bound_claims": "{not json"}, "bound_claims"},
		{"empty bound list", map[string]string{"bound_claims": `{"a":[]}`}, "empty list"},
		{"root policy", map[string]string{"bound_audiences": "a", "token_policies": "root"}, "root policy"},
		{"ttl above max", map[string]string{"bound_audiences": "a", "token_ttl": "2h", "token_max_ttl": "1h"}, "exceeds token_max_ttl"},
		{"bad ttl", map[string]string{"bound_audiences": "a", "token_ttl": "soon"}, "token_ttl"},
		{"bad mapping", map[string]string{"bound_audiences": "a", "claim_mappings": `{"ns":"a.b"}`}, "metadata keys"},
		{"bad type", map[string]string{"bound_audiences": "a", "bound_claims_type": "regex"}, "bound_claims_type"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := f.m.WriteRole(context.Background(), "jwt", "r", tt.fields)
			if errs.KindOf(err) != errs.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("WriteRole(%v) = %v, want InvalidArgument containing %q", tt.fields, err, tt.want)
			}
		})
	}
}

// TestLoginPoliciesAndGroups: a login gets the role's policies plus those
// of the groups its groups_claim names, and its claim_mappings metadata
// (nested claims by /path).
func TestLoginPoliciesAndGroups(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	if err := f.m.WriteRole(ctx, "jwt", "r", map[string]string{"bound_audiences": "sigil", "token_policies": "base",
		"groups_claim": "groups", "claim_mappings": `{"/k8s/ns":"namespace"}`, "token_ttl": "5m"}); err != nil {
		t.Fatal(err)
	}
	if err := f.m.WriteGroup(ctx, "jwt", "ops", map[string]string{"token_policies": "ops,base"}); err != nil {
		t.Fatal(err)
	}
	tok := f.sign(t, claims(map[string]any{"groups": []string{"ops", "unmapped", "../x"}, "k8s": map[string]any{"ns": "team-a"}}))
	v, err := f.m.Login(ctx, "10.0.0.1", "jwt", authmethod.Credentials{Role: "r", JWT: tok})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Policies, []string{"base", "ops"}) || v.Identity.Name != "alice" || v.Identity.Metadata["namespace"] != "team-a" || v.Token.TTL != 5*time.Minute {
		t.Fatalf("Verified = %+v identity %+v", v, v.Identity)
	}
	// A role that does not exist is NotFound, not a login for nobody.
	if _, err := f.m.Login(ctx, "10.0.0.1", "jwt", authmethod.Credentials{Role: "nope", JWT: tok}); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("unknown role: %v", err)
	}
}

// TestFailedLoginsLimitedPerSource: a source that fails beyond the burst
// is refused (even with a valid token) until it waits; another source is
// unaffected.
func TestFailedLoginsLimitedPerSource(t *testing.T) {
	f := newFixture(t, authmethod.NewFailureLimiter(0.001, 3))
	ctx := context.Background()
	if err := f.m.WriteRole(ctx, "jwt", "r", map[string]string{"bound_audiences": "sigil", "token_policies": "p"}); err != nil {
		t.Fatal(err)
	}
	bad := f.sign(t, claims(map[string]any{"aud": "other"}))
	good := f.sign(t, claims(nil))
	for i := range 4 {
		_, err := f.m.Login(ctx, "10.0.0.9", "jwt", authmethod.Credentials{Role: "r", JWT: bad})
		if errs.KindOf(err) != errs.PermissionDenied {
			t.Fatalf("attempt %d: %v, want PermissionDenied", i, err)
		}
	}
	if _, err := f.m.Login(ctx, "10.0.0.9", "jwt", authmethod.Credentials{Role: "r", JWT: good}); errs.KindOf(err) != errs.ResourceExhausted {
		t.Fatalf("blocked source with a valid token: %v, want ResourceExhausted", err)
	}
	if _, err := f.m.Login(ctx, "10.0.0.10", "jwt", authmethod.Credentials{Role: "r", JWT: good}); err != nil {
		t.Fatalf("other source: %v", err)
	}
}
