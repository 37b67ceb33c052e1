package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TestPoliciesAndTokens: a scoped token gets exactly what its policy grants,
// deny by default, and administrative paths stay out of reach of wildcards.
func TestPoliciesAndTokens(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	payments := write("payments.yaml", `rules:
  - path: "ca/sign/server"
    capabilities: [create]
  - path: "ca/certs"
    capabilities: [list]
names:
  dns: ["*.payments.example.test"]
`)
	greedy := write("greedy.yaml", `rules:
  - path: "**"
    capabilities: [read, create, update, delete, list]
`)
	if _, stderr, code := d.cli(t, "policy", "write", "payments", payments); code != 0 {
		t.Fatalf("policy write: %s", stderr)
	}
	if _, stderr, code := d.cli(t, "policy", "write", "greedy", greedy); code != 0 {
		t.Fatalf("policy write: %s", stderr)
	}
	bad := write("bad.yaml", "rules:\n  - path: x\n    capabilities: [fly]\n")
	if _, stderr, code := d.cli(t, "policy", "write", "bad", bad); code != 1 || !strings.Contains(stderr, "fly") {
		t.Errorf("invalid policy: code %d %s", code, stderr)
	}
	out, _, _ := d.cli(t, "policy", "list", "--format", "json")
	if !strings.Contains(out, "payments") || !strings.Contains(out, "greedy") {
		t.Errorf("policy list = %s", out)
	}

	token := func(policy string) string {
		out, stderr, code := d.cli(t, "token", "create", "--policy", policy, "--ttl", "1h", "--format", "json")
		var resp struct{ Token, ID string }
		if code != 0 || json.Unmarshal([]byte(out), &resp) != nil || resp.Token == "" {
			t.Fatalf("token create: %s %s", out, stderr)
		}
		return resp.Token
	}
	paymentsTok, greedyTok := token("payments"), token("greedy")
	as := func(tok string, args ...string) (string, string, int) {
		saved := d.exports["SIGIL_TOKEN"]
		d.exports["SIGIL_TOKEN"] = tok
		defer func() { d.exports["SIGIL_TOKEN"] = saved }()
		return d.cli(t, args...)
	}
	csr := func(name string) string {
		p := filepath.Join(dir, name+".csr")
		run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(dir, name+".key"),
			"-subj", "/CN="+name, "-addext", "subjectAltName=DNS:"+name, "-out", p)
		return p
	}

	tests := []struct {
		name     string
		tok      string
		args     []string
		wantCode int
		want     string
	}{
		{"granted name", paymentsTok, []string{"ca", "sign", "--csr", csr("api.payments.example.test")}, 0, "BEGIN CERTIFICATE"},
		{"name outside the grant", paymentsTok, []string{"ca", "sign", "--csr", csr("evil.example.test")}, 1, "evil.example.test"},
		{"profile not granted", paymentsTok, []string{"ca", "sign", "--profile", "client", "--csr", csr("c.payments.example.test")}, 1, "ca/sign/client"},
		{"revoke not granted", paymentsTok, []string{"ca", "revoke", "01ab"}, 1, "ca/revoke"},
		{"list granted", paymentsTok, []string{"ca", "list"}, 0, "SERIAL"},
		{"admin denied", paymentsTok, []string{"operator", "rotate"}, 1, "sys/rotate"},
		{"wildcard never reaches sys/", greedyTok, []string{"operator", "rotate"}, 1, "sys/rotate"},
		{"wildcard never reaches policies", greedyTok, []string{"policy", "list"}, 1, "sys/policies"},
		{"wildcard can revoke", greedyTok, []string{"ca", "revoke", "01ab"}, 1, "(NotFound)"},
		{"token looks itself up", paymentsTok, []string{"token", "lookup"}, 0, "payments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, code := as(tt.tok, tt.args...)
			if code != tt.wantCode || !strings.Contains(out+stderr, tt.want) {
				t.Errorf("code %d, out %q, stderr %q; want code %d containing %q", code, out, stderr, tt.wantCode, tt.want)
			}
		})
	}

	out, stderr, code := d.cli(t, "policy", "test", "--policy", "greedy", "--path", "sys/rotate", "--capability", "update", "--format", "json")
	if code != 0 || !strings.Contains(out, `"allowed": false`) {
		t.Errorf("policy test: %s %s", out, stderr)
	}

	// Revoking a token logs its holder out at once.
	out, _, _ = as(paymentsTok, "token", "lookup", "--format", "json")
	var info struct{ ID string }
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.ID == "" {
		t.Fatalf("token lookup: %s", out)
	}
	if _, stderr, code := d.cli(t, "token", "revoke", info.ID); code != 0 {
		t.Fatalf("token revoke: %s", stderr)
	}
	if _, stderr, code := as(paymentsTok, "ca", "list"); code != 1 || !strings.Contains(stderr, "invalid or expired token") {
		t.Errorf("revoked token still works: %d %s", code, stderr)
	}

	// Every decision above was audited, and the chain is intact.
	out, stderr, code = d.cli(t, "audit", "verify", "--format", "json")
	var av struct {
		OK      bool `json:"ok"`
		Records int  `json:"records"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &av) != nil || !av.OK || av.Records < len(tests)+5 {
		t.Fatalf("audit verify: %s %s", out, stderr)
	}
	if _, stderr, code := as(greedyTok, "audit", "verify"); code != 1 || !strings.Contains(stderr, "sys/audit") {
		t.Errorf("audit verify without sudo: %d %s", code, stderr)
	}
}

// TestAuditFile: with audit.file configured, the file holds the same
// hash chain; `sigil audit verify FILE` passes, and editing or deleting one
// line makes it fail at that line.
func TestAuditFile(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.jsonl")
	cfg := filepath.Join(dir, "sigil.yaml")
	if err := os.WriteFile(cfg, []byte("audit:\n  file: "+logPath+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, filepath.Join(dir, "data"), "--config", cfg)
	for i := 0; i < 5; i++ {
		if _, stderr, code := d.cli(t, "ca", "list"); code != 0 {
			t.Fatal(stderr)
		}
	}
	// A token's policies must exist: write an (empty-handed) one first.
	nothing := filepath.Join(dir, "nothing.yaml")
	if err := os.WriteFile(nothing, []byte("rules:\n  - path: \"ca/certs\"\n    capabilities: [deny]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "policy", "write", "nothing", nothing); code != 0 {
		t.Fatalf("policy write: %s", stderr)
	}
	secretTok, _, _ := d.cli(t, "token", "create", "--policy", "nothing", "--format", "json")
	// logrotate: move the file away, SIGHUP, and the server writes a new one.
	rotated := logPath + ".1"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "audit file reopened after SIGHUP", func() bool {
		_, _, _ = d.cli(t, "ca", "list")
		st, err := os.Stat(logPath)
		return err == nil && st.Size() > 0
	})
	d.stop(t)
	if out, stderr, code := d.cli(t, "audit", "verify", rotated); code != 0 || !strings.Contains(out, "intact") {
		t.Fatalf("audit verify of the rotated file: %s %s", out, stderr)
	}
	logPath = rotated
	if out, stderr, code := d.cli(t, "audit", "verify", logPath); code != 0 || !strings.Contains(out, "intact") {
		t.Fatalf("audit verify FILE: %s %s", out, stderr)
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ Token string }
	_ = json.Unmarshal([]byte(secretTok), &created)
	if created.Token == "" || strings.Contains(string(data), created.Token) || strings.Contains(string(data), d.exports["SIGIL_TOKEN"]) {
		t.Fatal("the audit file holds a token in clear (or the token was not created)")
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) < 6 {
		t.Fatalf("only %d audit lines", len(lines))
	}
	tampered := []struct {
		name  string
		lines []string
	}{
		{"edited", append(append(append([]string{}, lines[:2]...), strings.Replace(lines[2], `"allowed":true`, `"allowed":false`, 1)), lines[3:]...)},
		{"deleted", append(append([]string{}, lines[:2]...), lines[3:]...)},
	}
	for _, tc := range tampered {
		p := filepath.Join(dir, tc.name+".jsonl")
		if err := os.WriteFile(p, []byte(strings.Join(tc.lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, stderr, code := d.cli(t, "audit", "verify", p); code != 1 || !strings.Contains(stderr, "line 3") {
			t.Errorf("%s line: code %d, stderr %q (want failure at line 3)", tc.name, code, stderr)
		}
	}
}

// TestRateLimit: issuance is bounded per identity and path, with a clear
// "retry after" error.
func TestRateLimit(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sigil.yaml")
	if err := os.WriteFile(cfg, []byte("rate_limit:\n  per_second: 0.2\n  burst: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, filepath.Join(dir, "data"), "--config", cfg)
	csr := filepath.Join(dir, "r.csr")
	run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(dir, "r.key"),
		"-subj", "/CN=r.example.test", "-addext", "subjectAltName=DNS:r.example.test", "-out", csr)
	for i := 0; i < 2; i++ {
		if _, stderr, code := d.cli(t, "ca", "sign", "--csr", csr); code != 0 {
			t.Fatalf("sign %d within the burst: %s", i+1, stderr)
		}
	}
	_, stderr, code := d.cli(t, "ca", "sign", "--csr", csr)
	if code != 1 || !strings.Contains(stderr, "rate limited on ca/sign/server: retry after") || !strings.Contains(stderr, "ResourceExhausted") {
		t.Fatalf("third sign: code %d, %s", code, stderr)
	}
	// The refusal tells gRPC clients when to retry, in whole seconds.
	conn, ctx := d.grpcConn(t)
	pemCSR, err := os.ReadFile(csr)
	if err != nil {
		t.Fatal(err)
	}
	var md metadata.MD
	_, err = sigilv1.NewCAServiceClient(conn).Sign(ctx, &sigilv1.SignRequest{Csr: pemCSR}, grpc.Header(&md))
	if ra := md.Get("retry-after"); status.Code(err) != codes.ResourceExhausted || len(ra) != 1 || ra[0] == "0" || strings.Trim(ra[0], "0123456789") != "" {
		t.Fatalf("limited Sign: %v, retry-after %q", err, md.Get("retry-after"))
	}
	// Other paths have their own bucket.
	if _, stderr, code := d.cli(t, "ca", "sign", "--profile", "client", "--csr", csr); code != 0 {
		t.Fatalf("another path is limited too: %s", stderr)
	}
}

// TestTokensAreLeased: every scoped token has a lease; revoking the lease
// logs the holder out at once, and a short TTL expires it by itself.
func TestTokensAreLeased(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	pol := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pol, []byte("rules:\n  - path: \"ca/certs\"\n    capabilities: [list]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "policy", "write", "lister", pol); code != 0 {
		t.Fatal(stderr)
	}
	create := func(ttl string) (tok, id string) {
		out, stderr, code := d.cli(t, "token", "create", "--policy", "lister", "--ttl", ttl, "--format", "json")
		var r struct{ Token, ID string }
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("token create: %s", stderr)
		}
		return r.Token, r.ID
	}
	tok, id := create("1h")
	as := func(args ...string) (string, string, int) { return d.cli(t, append(args, "--token", tok)...) }
	if _, stderr, code := as("ca", "list"); code != 0 {
		t.Fatalf("fresh token: %s", stderr)
	}
	listed, _, _ := d.cli(t, "lease", "list", "--prefix", "auth/token/", "--format", "json")
	if !strings.Contains(listed, "auth/token/"+id) {
		t.Fatalf("no lease for token %s: %s", id, listed)
	}
	if _, stderr, code := d.cli(t, "lease", "revoke", "auth/token/"+id); code != 0 {
		t.Fatalf("lease revoke: %s", stderr)
	}
	if _, stderr, code := as("ca", "list"); code != 1 || !strings.Contains(stderr, "invalid or expired token") {
		t.Fatalf("token still works after its lease was revoked: %d %s", code, stderr)
	}
	// Wrapped: the token comes back once, through sigil unwrap.
	out, stderr, code := d.cli(t, "token", "create", "--policy", "lister", "--wrap-ttl", "5m", "--format", "json")
	var w struct {
		WrapToken string `json:"wrap_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &w) != nil || w.WrapToken == "" || strings.Contains(out, `"token"`) {
		t.Fatalf("token create --wrap-ttl: %s %s", out, stderr)
	}
	out, stderr, code = d.cli(t, "unwrap", w.WrapToken, "--format", "json")
	var u struct {
		Data map[string]string `json:"data"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &u) != nil || u.Data["token"] == "" {
		t.Fatalf("unwrap: %s %s", out, stderr)
	}
	if _, stderr, code := d.cli(t, "ca", "list", "--token", u.Data["token"]); code != 0 {
		t.Fatalf("unwrapped token does not work: %s", stderr)
	}
	if _, _, code := d.cli(t, "unwrap", w.WrapToken); code != 1 {
		t.Fatal("a wrapped token unwrapped twice")
	}

	// A 2-second token is revoked by the expiry worker.
	tok, id = create("2s")
	waitFor(t, 15*time.Second, "2s token lease revoked by expiry", func() bool {
		out, _, _ := d.cli(t, "lease", "lookup", "auth/token/"+id, "--format", "json")
		return strings.Contains(out, `"state": "revoked"`)
	})
	if _, _, code := as("ca", "list"); code != 1 {
		t.Fatal("expired token still works")
	}
}
