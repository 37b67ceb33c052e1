package e2e

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// authjwtAttackHS256 forges a token "signed" with HS256 using the issuer's
// RSA public key (PEM) as the HMAC secret: the algorithm-confusion attack
// against verifiers that let the token pick the algorithm.
func authjwtAttackHS256(t *testing.T, pubPEM []byte, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT", "kid": "test-key-1"})
	p, _ := json.Marshal(claims)
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	m := hmac.New(sha256.New, pubPEM)
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// authjwtAttackNone is an unsigned token (alg none).
func authjwtAttackNone(claims map[string]any) string {
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT"})
	p, _ := json.Marshal(claims)
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

// TestAttackAuthJWT replays the attacks on JWT login through the built
// binary: each is refused with a clear error, each refusal is audited
// (without the token), and a source that keeps failing is rate-limited,
// even when it then presents a valid token.
func TestAttackAuthJWT(t *testing.T) {
	is := authjwtNewIssuer(t)
	const iss = "https://ci.example.test"
	// Refill is one failure an hour, so the block the test provokes below
	// lasts however slowly a loaded machine runs the CLI; the default refill
	// (one every 6 s) made the last step a race.
	d, dir := authjwtSetup(t, is, iss, "failed_logins: {per_second: 0.0003, burst: 10}")
	authjwtWrite(t, dir, "ci.yaml", "rules:\n  - path: \"secret/data/ci/*\"\n    capabilities: [read]\n")
	kvMust(t, d, "policy", "write", "ci-read", filepath.Join(dir, "ci.yaml"))

	// A role with no bound audiences, subject or claims would accept every
	// token the issuer signs: refused at write time.
	if _, stderr, code := d.cli(t, "auth", "role", "write", "jwt/open", "token_policies=ci-read"); code == 0 ||
		!strings.Contains(stderr, "needs at least one of bound_audiences, bound_subject or bound_claims") {
		t.Fatalf("empty-bound role: exit %d %s", code, stderr)
	}
	kvMust(t, d, "auth", "role", "write", "jwt/ci", "bound_audiences=sigil", "token_policies=ci-read", "clock_skew_leeway=30s")

	now := time.Now()
	good := func() map[string]any {
		return map[string]any{"iss": iss, "sub": "repo:acme/app", "aud": "sigil", "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
	}
	with := func(k string, v any) map[string]any {
		c := good()
		c[k] = v
		return c
	}
	tokenFile := filepath.Join(dir, "token")
	login := func(jwt string) (string, int) {
		_, stderr, code := authjwtCLI(t, d, tokenFile, "login", "--method", "jwt", "--mount", "jwt", "--role", "ci", "--jwt", jwt, "--no-store")
		return stderr, code
	}
	// Baseline: the issuer's good token logs in.
	if stderr, code := login(is.sign(t, good(), "")); code != 0 {
		t.Fatalf("valid token refused: %s", stderr)
	}

	rogue, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&is.key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	oversized := with("padding", strings.Repeat("A", 20<<10))
	fetchesBefore := is.fetches.Load()
	attacks := []struct {
		name, jwt, want string
	}{
		{"expired", is.sign(t, with("exp", now.Add(-10*time.Minute).Unix()), ""), "jwt expired at"},
		{"not yet valid", is.sign(t, with("nbf", now.Add(10*time.Minute).Unix()), ""), "jwt is not valid yet"},
		{"wrong issuer", is.sign(t, with("iss", "https://evil.example.test"), ""), "jwt issuer is not the bound issuer"},
		{"wrong audience", is.sign(t, with("aud", "someone-else"), ""), "is not one of the role's bound_audiences"},
		{"alg none", authjwtAttackNone(good()), `jwt alg "none" refused`},
		{"HS256 with the RSA public key", authjwtAttackHS256(t, pubPEM, good()), `jwt alg "HS256" refused: only public-key signatures`},
		{"unknown kid", authjwtSign(t, "RS256", rogue, "rogue-key", good()), "jwt signed by an unknown key"},
		{"right kid, wrong key", authjwtSign(t, "RS256", rogue, "test-key-1", good()), "signature does not verify"},
		{"oversized", is.sign(t, oversized, ""), "exceeds the 16384-byte limit"},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			stderr, code := login(a.jwt)
			if code == 0 || !strings.Contains(stderr, a.want) {
				t.Fatalf("exit %d, stderr %q, want a refusal containing %q", code, stderr, a.want)
			}
		})
	}
	// Unknown kids refresh the JWKS at most once per interval, not once
	// per token: a flood costs the issuer nothing.
	for range 3 {
		login(authjwtSign(t, "RS256", rogue, "rogue-key-2", good()))
	}
	if n := is.fetches.Load() - fetchesBefore; n > 1 {
		t.Errorf("unknown kids caused %d JWKS fetches, want at most 1 within the refresh interval", n)
	}

	// Per-source failure limiting: 10 failures are allowed in a burst; the
	// 13 so far exhausted it, so even a valid token is refused now.
	stderr, code := login(is.sign(t, good(), ""))
	if code == 0 || !strings.Contains(stderr, "too many failed logins") {
		t.Fatalf("after repeated failures: exit %d %s, want rate-limited", code, stderr)
	}
	// The wait reflects failed_logins (an hour's refill), not the default.
	if m := regexp.MustCompile(`retry in (\S+?)[)"\s]`).FindStringSubmatch(stderr + " "); m == nil {
		t.Errorf("refusal %q does not say when to retry", stderr)
	} else if d, err := time.ParseDuration(m[1]); err != nil || d < time.Minute {
		t.Errorf("refusal says retry in %q: want the configured refill (minutes), not the 6 s default", m[1])
	}

	// Every attempt is audited: the baseline success and each refusal,
	// and no JWT appears in the log.
	if out, stderr, code := d.cli(t, "audit", "verify", "--format", "json"); code != 0 || !strings.Contains(out, `"ok": true`) {
		t.Fatalf("audit verify: %s %s", out, stderr)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(d.dataDir, "sigil.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ok, refused int
	if err := db.QueryRow(`SELECT
		SUM(CASE WHEN r GLOB '*AuthMethodService/Login*' AND r LIKE '%"allowed":true%' THEN 1 ELSE 0 END),
		SUM(CASE WHEN r GLOB '*AuthMethodService/Login*' AND r LIKE '%"allowed":false%' THEN 1 ELSE 0 END)
		FROM (SELECT CAST(record AS TEXT) AS r FROM audit_log)`).Scan(&ok, &refused); err != nil {
		t.Fatal(err)
	}
	if ok != 1 || refused != len(attacks)+3+1 {
		t.Errorf("audit log has %d successful and %d refused logins, want 1 and %d", ok, refused, len(attacks)+4)
	}
	rows, err := db.Query(`SELECT CAST(record AS TEXT) FROM audit_log`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		for _, a := range attacks[:4] {
			if strings.Contains(r, a.jwt) {
				t.Fatalf("audit record holds a presented JWT: %s", r)
			}
		}
	}
}
