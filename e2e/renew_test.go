package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// renewInfo is `sigil token renew --format json`.
type renewInfo struct {
	ID           string    `json:"id"`
	ExpiresAt    time.Time `json:"expires_at"`
	MaxExpiresAt time.Time `json:"max_expires_at"`
}

// renewLogin logs in to jwt/ROLE as sub and returns the login and the token
// file the CLI now uses.
func renewLogin(t *testing.T, d *devServer, is *authjwtIssuer, dir, iss, role, sub string) (authjwtLogin, string) {
	t.Helper()
	now := time.Now()
	jwtFile := authjwtWrite(t, dir, sub+".jwt", is.sign(t, map[string]any{"iss": iss, "sub": sub, "aud": "sigil",
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}, ""))
	tokenFile := filepath.Join(dir, sub, "token")
	out, stderr, code := authjwtCLI(t, d, tokenFile, "login", "--method", "jwt", "--mount", "jwt", "--role", role, "--jwt", "@"+jwtFile, "--format", "json")
	if code != 0 {
		t.Fatalf("login %s: exit %d: %s", sub, code, stderr)
	}
	var l authjwtLogin
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("login output %q: %v", out, err)
	}
	return l, tokenFile
}

// renewRun runs `sigil token renew ARGS --format json` with tokenFile's
// token and returns the result, stderr and exit code.
func renewRun(t *testing.T, d *devServer, tokenFile string, args ...string) (renewInfo, string, int) {
	t.Helper()
	out, stderr, code := authjwtCLI(t, d, tokenFile, append([]string{"token", "renew", "--format", "json"}, args...)...)
	var r renewInfo
	if code == 0 {
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("token renew output %q: %v", out, err)
		}
	}
	return r, stderr, code
}

// renewWithin reports whether got is within slack of want.
func renewWithin(got, want time.Time, slack time.Duration) bool {
	d := got.Sub(want)
	return d >= -slack && d <= slack
}

// TestRenewLoginToken (issue 17: "renewable within max; revoked with its
// lease"): a JWT login's token (token_ttl 5s, token_max_ttl 15s) renews
// itself with `sigil token renew`, keeps working past its first expiry,
// is capped at its max with a warning, stops working and cannot be renewed
// after the max; a narrow token cannot renew another; a renewed token is
// still revoked with its lease.
func TestRenewLoginToken(t *testing.T) {
	is := authjwtNewIssuer(t)
	const iss = "https://renew.example.test"
	d, dir := authjwtSetup(t, is, iss)
	authjwtWrite(t, dir, "app.yaml", "rules:\n  - path: \"secret/data/app/*\"\n    capabilities: [read]\n")
	kvMust(t, d, "policy", "write", "app-read", filepath.Join(dir, "app.yaml"))
	kvMust(t, d, "kv", "put", "secret/app/db", "password=s3cret-app")
	kvMust(t, d, "auth", "role", "write", "jwt/app", "bound_audiences=sigil", "user_claim=sub",
		"token_policies=app-read", "token_ttl=5s", "token_max_ttl=15s")
	// A role without a max above its TTL gives tokens that do not renew.
	kvMust(t, d, "auth", "role", "write", "jwt/fixed", "bound_audiences=sigil", "user_claim=sub",
		"token_policies=app-read", "token_ttl=1m", "token_max_ttl=1m")

	kvGet := func(tokenFile string) (string, string, int) {
		return authjwtCLI(t, d, tokenFile, "kv", "get", "secret/app/db", "--field", "password")
	}

	t0 := time.Now()
	app, appFile := renewLogin(t, d, is, dir, iss, "app", "svc-app")
	_, otherFile := renewLogin(t, d, is, dir, iss, "app", "svc-other")
	_, fixedFile := renewLogin(t, d, is, dir, iss, "fixed", "svc-fixed")

	// A token holding only app-read cannot renew another token.
	if _, stderr, code := renewRun(t, d, otherFile, app.TokenID); code == 0 || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("narrow token renewing another: exit %d %s", code, stderr)
	}
	// A token from a role without a renewable max is refused, clearly.
	if _, stderr, code := renewRun(t, d, fixedFile); code == 0 || !strings.Contains(stderr, "not renewable") {
		t.Fatalf("renewing a non-renewable token: exit %d %s", code, stderr)
	}

	// Renew-self needs no grant; the new expiry is now+increment.
	r, stderr, code := renewRun(t, d, appFile, "--increment", "8s")
	if code != 0 {
		t.Fatalf("token renew: exit %d %s", code, stderr)
	}
	if r.ID != app.TokenID || !renewWithin(r.ExpiresAt, time.Now().Add(8*time.Second), 2*time.Second) ||
		!renewWithin(r.MaxExpiresAt, t0.Add(15*time.Second), 2*time.Second) {
		t.Fatalf("renewed %+v, want expiry about now+8s and max about login+15s", r)
	}
	// Past the login's own 5s, the renewed token still works.
	time.Sleep(time.Until(t0.Add(6 * time.Second)))
	if out, stderr, code := kvGet(appFile); code != 0 || strings.TrimSpace(out) != "s3cret-app" {
		t.Fatalf("kv get with the renewed token past its first expiry: exit %d %q %s", code, out, stderr)
	}
	// The token that did not renew has expired by now.
	if _, stderr, code := kvGet(otherFile); code == 0 || !strings.Contains(stderr, "invalid or expired token") {
		t.Fatalf("kv get with the unrenewed token past its expiry: exit %d %s", code, stderr)
	}

	// A renewal past the max is capped at it, with a warning.
	capped, stderr, code := renewRun(t, d, appFile, "--increment", "1h")
	if code != 0 {
		t.Fatalf("token renew past max: exit %d %s", code, stderr)
	}
	if !capped.ExpiresAt.Equal(capped.MaxExpiresAt) || !renewWithin(capped.ExpiresAt, t0.Add(15*time.Second), 2*time.Second) ||
		!strings.Contains(stderr, "warning: ttl capped") {
		t.Fatalf("renewal past max: %+v, stderr %q; want expiry = max about login+15s and a warning", capped, stderr)
	}

	// After the max the token no longer works and cannot be renewed.
	time.Sleep(time.Until(capped.MaxExpiresAt.Add(1500 * time.Millisecond)))
	if _, stderr, code := kvGet(appFile); code == 0 || !strings.Contains(stderr, "invalid or expired token") {
		t.Fatalf("kv get after the max: exit %d %s", code, stderr)
	}
	if _, stderr, code := renewRun(t, d, appFile); code == 0 {
		t.Fatalf("renewing after the max succeeded: %s", stderr)
	}

	// Revocation still revokes a renewed token (root renews it: update on
	// sys/tokens/ID).
	again, againFile := renewLogin(t, d, is, dir, iss, "app", "svc-again")
	out := kvMust(t, d, "token", "renew", "--increment", "10s", "--format", "json", again.TokenID)
	var ra renewInfo
	if err := json.Unmarshal([]byte(out), &ra); err != nil || ra.ID != again.TokenID {
		t.Fatalf("root renewing another token: %q %v", out, err)
	}
	// Renewing the token's lease renews the token with it, never the
	// lease alone.
	kvMust(t, d, "lease", "renew", "--increment", "12s", "auth/token/"+again.TokenID)
	var info struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	if out := kvMust(t, d, "token", "lookup", "--format", "json", again.TokenID); json.Unmarshal([]byte(out), &info) != nil ||
		!renewWithin(info.ExpiresAt, time.Now().Add(12*time.Second), 2*time.Second) {
		t.Fatalf("token after its lease was renewed by 12s: %q", out)
	}
	kvMust(t, d, "token", "revoke", again.TokenID)
	if _, stderr, code := kvGet(againFile); code == 0 || !strings.Contains(stderr, "invalid or expired token") {
		t.Fatalf("kv get after revoking a renewed token: exit %d %s", code, stderr)
	}
}

// TestRenewCreatedToken: `sigil token create --ttl --max-ttl` makes a
// token that renews itself up to its max; --max-ttl without a --ttl at or
// below it is refused; a token created without --max-ttl is not renewable.
func TestRenewCreatedToken(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	authjwtWrite(t, dir, "p.yaml", "rules:\n  - path: \"secret/data/x/*\"\n    capabilities: [read]\n")
	kvMust(t, d, "policy", "write", "renew-p", filepath.Join(dir, "p.yaml"))
	create := func(args ...string) (string, string) {
		out := kvMust(t, d, append([]string{"token", "create", "--policy", "renew-p", "--format", "json"}, args...)...)
		var v struct {
			Token string `json:"token"`
			ID    string `json:"id"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil || v.Token == "" {
			t.Fatalf("token create output %q: %v", out, err)
		}
		return v.Token, v.ID
	}
	tok, id := create("--ttl", "5s", "--max-ttl", "20s")
	tokFile := authjwtWrite(t, dir, "tok", tok+"\n")
	start := time.Now()
	r, stderr, code := renewRun(t, d, tokFile, "--increment", "12s")
	if code != 0 || r.ID != id || !renewWithin(r.ExpiresAt, time.Now().Add(12*time.Second), 2*time.Second) ||
		!renewWithin(r.MaxExpiresAt, start.Add(20*time.Second), 2*time.Second) {
		t.Fatalf("renewing a created renewable token: exit %d %+v %s", code, r, stderr)
	}
	fixed, _ := create("--ttl", "1m")
	fixedFile := authjwtWrite(t, dir, "fixed", fixed+"\n")
	if _, stderr, code := renewRun(t, d, fixedFile); code == 0 || !strings.Contains(stderr, "not renewable") {
		t.Fatalf("renewing a token created without --max-ttl: exit %d %s", code, stderr)
	}
	if _, stderr, code := d.cli(t, "token", "create", "--policy", "renew-p", "--max-ttl", "20s"); code == 0 || !strings.Contains(stderr, "max_ttl_seconds") {
		t.Fatalf("--max-ttl without --ttl: exit %d %s", code, stderr)
	}
}
