package tokens_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/enginestest"
	"github.com/sigil-ca/sigil/engines/tokens"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/lease"
)

// env is a real mount stack: SQLite, the barrier, a soft keystore, the
// tokens engine mounted at "tok", and a lease manager.
type env struct {
	mounts *engines.Mounts
	leases *lease.Manager
}

func newEnv(t testing.TB) *env {
	t.Helper()
	st := enginestest.New(t, func(b *barrier.Barrier) engines.Services {
		return engines.Services{Custody: hsm.NewSoft(hsmtest.NewMemBlobStore(), b, nil)}
	}, tokens.Register)
	st.Mount(t, "tok", tokens.Type)
	lm, err := lease.New(lease.Config{Store: st.Store, Sealer: st.Barrier, Engines: st.Mounts})
	if err != nil {
		t.Fatal(err)
	}
	return &env{mounts: st.Mounts, leases: lm}
}

func (e *env) role(t testing.TB, name string, fields map[string]string) {
	t.Helper()
	if err := e.mounts.WriteRole(context.Background(), "tok", name, fields); err != nil {
		t.Fatal(err)
	}
}

func (e *env) engine(t testing.TB) *tokens.Engine {
	t.Helper()
	eng, err := e.mounts.Engine(context.Background(), "tok")
	if err != nil {
		t.Fatal(err)
	}
	return eng.(*tokens.Engine)
}

func (e *env) mint(t testing.TB, role string) (token, leaseID string) {
	t.Helper()
	m, err := e.leases.Mint(context.Background(), lease.MintRequest{Mount: "tok", Role: role, Identity: "token:svc"})
	if err != nil {
		t.Fatal(err)
	}
	return m.Data["token"], m.Lease.ID
}

// introspect does what the server does: lease id from the token, the
// active lease, then the engine's check.
func (e *env) introspect(t testing.TB, token string) (*tokens.Introspection, error) {
	t.Helper()
	ctx := context.Background()
	id, err := tokens.LeaseIDOf(token)
	if err != nil {
		return nil, err
	}
	var tl *tokens.Lease
	if l, rev, err := e.leases.Active(ctx, id); err == nil {
		tl = &tokens.Lease{ID: l.ID, IssuedAt: l.IssuedAt, ExpiresAt: l.ExpiresAt, Revocation: rev}
	}
	return e.engine(t).Introspect(ctx, token, tl)
}

func TestValidateRole(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name    string
		fields  map[string]string
		wantErr bool
		check   func(map[string]string) bool
	}{
		{name: "defaults", fields: map[string]string{}, check: func(m map[string]string) bool {
			return m["format"] == "opaque" && m["ttl"] == "1h0m0s" && m["renewable"] == "true"
		}},
		{name: "jwt defaults not renewable", fields: map[string]string{"format": "jwt"}, check: func(m map[string]string) bool { return m["renewable"] == "false" }},
		{name: "scopes normalised", fields: map[string]string{"scopes": "read, write read"}, check: func(m map[string]string) bool { return m["scopes"] == "read write" }},
		{name: "claims templated", fields: map[string]string{"format": "jwt", "claims": `{"team":"{{identity}}-{{role}}"}`}},
		{name: "unknown format", fields: map[string]string{"format": "paseto"}, wantErr: true},
		{name: "bad ttl", fields: map[string]string{"ttl": "soon"}, wantErr: true},
		{name: "ttl over max", fields: map[string]string{"ttl": "2h", "max_ttl": "1h"}, wantErr: true},
		{name: "renewable jwt", fields: map[string]string{"format": "jwt", "renewable": "true"}, wantErr: true},
		{name: "reserved claim", fields: map[string]string{"format": "jwt", "claims": `{"sub":"x"}`}, wantErr: true},
		{name: "unknown placeholder", fields: map[string]string{"claims": `{"x":"{{password}}"}`}, wantErr: true},
		{name: "claims not strings", fields: map[string]string{"claims": `{"x":1}`}, wantErr: true},
		{name: "bad scope char", fields: map[string]string{"scopes": `a"b`}, wantErr: true},
		{name: "jwt max_ttl over key retention", fields: map[string]string{"format": "jwt", "max_ttl": "48h"}, wantErr: true},
		{name: "unknown key", fields: map[string]string{"colour": "blue"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.engine(t).ValidateRole(context.Background(), "r", tt.fields)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, engines.ErrInvalidConfig) {
				t.Fatalf("err %v is not ErrInvalidConfig", err)
			}
			if tt.check != nil && !tt.check(got) {
				t.Fatalf("normalised role %v", got)
			}
		})
	}
}

func TestOpaqueLifecycle(t *testing.T) {
	e := newEnv(t)
	e.role(t, "svc", map[string]string{"scopes": "read write", "audience": "api"})
	tok, id := e.mint(t, "svc")
	if !strings.HasPrefix(tok, tokens.Prefix) {
		t.Fatalf("token %q lacks the sgl_ prefix", tok)
	}
	info, err := e.introspect(t, tok)
	if err != nil {
		t.Fatalf("fresh token inactive: %v", err)
	}
	if info.LeaseID != id || strings.Join(info.Scopes, " ") != "read write" || info.Subject != "token:svc" || info.TokenType != "opaque" {
		t.Fatalf("introspection %+v", info)
	}

	// Tampering anywhere makes it inactive: in the secret (the checksum
	// catches it), or in the secret with a recomputed checksum (the HMAC
	// catches it), or a token naming another lease.
	other, _ := e.mint(t, "svc")
	parts := strings.Split(tok, ".")
	swapped := parts[0] + "." + strings.Split(other, ".")[1] + "." + parts[2]
	for name, bad := range map[string]string{
		"flipped char":      tok[:len(tok)-8] + flip(tok[len(tok)-8]) + tok[len(tok)-7:],
		"other secret":      swapped,
		"truncated":         tok[:len(tok)-1],
		"no prefix":         strings.TrimPrefix(tok, tokens.Prefix),
		"empty":             "",
		"garbage jwt":       "a.b.c",
		"recomputed crc":    recomputeChecksum(t, swapped),
		"unknown lease":     recomputeChecksum(t, tokens.Prefix+"dG9rL3N2Yy9ub3BlCg."+parts[1]+".AAAAAA"),
		"oversized":         tokens.Prefix + strings.Repeat("A", tokens.MaxTokenLen),
		"lease id no mount": recomputeChecksum(t, tokens.Prefix+"eA."+parts[1]+".AAAAAA"),
	} {
		if _, err := e.introspect(t, bad); !errors.Is(err, tokens.ErrInactive) {
			t.Errorf("%s: %v, want inactive", name, err)
		}
	}

	if err := e.leases.Revoke(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.introspect(t, tok); !errors.Is(err, tokens.ErrInactive) {
		t.Fatalf("revoked token: %v, want inactive", err)
	}
	if _, err := e.introspect(t, other); err != nil {
		t.Fatalf("revoking one lease deactivated another: %v", err)
	}
}

func flip(c byte) string {
	if c == 'A' {
		return "B"
	}
	return "A"
}

// recomputeChecksum fixes the CRC of a token whose body was altered, to
// reach the HMAC comparison.
func recomputeChecksum(t *testing.T, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	body := strings.Join(parts[:2], ".")
	return tokens.EncodeChecksumForTest(body)
}

func TestJWTLifecycleAndRotation(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.role(t, "api", map[string]string{"format": "jwt", "ttl": "10m", "audience": "payments", "scopes": "pay",
		"claims": `{"team":"{{identity}}@{{mount}}"}`})
	tok, id := e.mint(t, "api")
	jwks := func() jose.JSONWebKeySet {
		b, err := e.engine(t).JWKS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(b, &set); err != nil {
			t.Fatal(err)
		}
		return set
	}
	set := jwks()
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS has %d keys", len(set.Keys))
	}
	// Verify with go-jose against the published key, as a relying party.
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Headers[0].KeyID != set.Keys[0].KeyID {
		t.Fatalf("kid %q not the published %q", parsed.Headers[0].KeyID, set.Keys[0].KeyID)
	}
	var claims jwt.Claims
	var extra struct {
		Team  string `json:"team"`
		Scope string `json:"scope"`
	}
	if err := parsed.Claims(set.Keys[0].Key, &claims, &extra); err != nil {
		t.Fatal(err)
	}
	if claims.ID != id || claims.Subject != "token:svc" || !claims.Audience.Contains("payments") || extra.Team != "token:svc@tok" || extra.Scope != "pay" {
		t.Fatalf("claims %+v %+v", claims, extra)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: "sigil:tok", Time: time.Now()}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.introspect(t, tok); err != nil {
		t.Fatalf("fresh JWT inactive: %v", err)
	}

	// Rotation: a new kid signs; the old one stays published and its
	// tokens stay verifiable.
	if err := e.mounts.RotateRoot(ctx, "tok"); err != nil {
		t.Fatal(err)
	}
	tok2, _ := e.mint(t, "api")
	p2, _ := jwt.ParseSigned(tok2, []jose.SignatureAlgorithm{jose.ES256})
	if p2.Headers[0].KeyID == parsed.Headers[0].KeyID {
		t.Fatal("rotation kept the signing key")
	}
	if set = jwks(); len(set.Keys) != 2 {
		t.Fatalf("after rotation JWKS has %d keys, want old and new", len(set.Keys))
	}
	for _, tk := range []string{tok, tok2} {
		if _, err := e.introspect(t, tk); err != nil {
			t.Fatalf("token inactive after rotation: %v", err)
		}
	}

	// A JWT signed by a key the mount does not have is inactive even with
	// a valid lease id.
	forged := forgeJWT(t, id)
	if _, err := e.introspect(t, forged); !errors.Is(err, tokens.ErrInactive) {
		t.Fatalf("forged JWT: %v", err)
	}

	if err := e.leases.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := e.introspect(t, tok); !errors.Is(err, tokens.ErrInactive) {
		t.Fatalf("revoked JWT: %v", err)
	}
}

func forgeJWT(t *testing.T, leaseID string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(jwt.Claims{ID: leaseID, Issuer: "sigil:tok", Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func FuzzLeaseIDOf(f *testing.F) {
	f.Add("sgl_dG9rL3N2Yy9hYmM.AAAA.AAAAAA")
	f.Add("eyJhbGciOiJFUzI1NiJ9.e30.AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := tokens.LeaseIDOf(s)
		if err == nil && id == "" {
			t.Fatal("accepted token with empty lease id")
		}
		if err != nil && !errors.Is(err, tokens.ErrInactive) {
			t.Fatalf("error %v is not ErrInactive", err)
		}
	})
}

func BenchmarkOpaqueMintIntrospect(b *testing.B) {
	benchMintIntrospect(b, map[string]string{"format": "opaque", "scopes": "read"})
}

func BenchmarkJWTMintIntrospect(b *testing.B) {
	benchMintIntrospect(b, map[string]string{"format": "jwt", "scopes": "read"})
}

// benchMintIntrospect mints a token (lease stored, sealed revocation data)
// and introspects it, as the server does per request pair.
func benchMintIntrospect(b *testing.B, role map[string]string) {
	e := newEnv(b)
	e.role(b, "r", role)
	b.ResetTimer()
	for b.Loop() {
		tok, _ := e.mint(b, "r")
		if _, err := e.introspect(b, tok); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}
