package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkloadMTLS: a workload authenticates with the SVID Sigil issued it,
// gets what the policy bound to its SPIFFE ID grants, may renew its own
// identity and no other, and is refused once its certificate is revoked.
func TestWorkloadMTLS(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	pol := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(pol, []byte(`rules:
  - path: "ca/sign/workload"
    capabilities: [create]
bindings:
  spiffe_ids: ["spiffe://sigil.test/ns/web/*"]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "policy", "write", "web", pol); code != 0 {
		t.Fatalf("policy write: %s", stderr)
	}
	key, cert := filepath.Join(dir, "app.key"), filepath.Join(dir, "app.pem")
	if _, stderr, code := d.cli(t, "ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/web/app", "--key-out", key, "--cert-out", cert, "--format", "json"); code != 0 {
		t.Fatalf("issue SVID: %s", stderr)
	}
	serial := leafFrom(t, readFile(t, cert)).SerialNumber.Text(16)
	asWorkload := func(args ...string) (string, string, int) {
		saved := d.exports["SIGIL_TOKEN"]
		d.exports["SIGIL_TOKEN"] = ""
		defer func() { d.exports["SIGIL_TOKEN"] = saved }()
		return d.cli(t, append(args, "--client-cert", cert, "--client-key", key)...)
	}

	// Renewing its own identity works with no token at all.
	renewed := filepath.Join(dir, "app2.pem")
	if _, stderr, code := asWorkload("ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/web/app", "--key-out", filepath.Join(dir, "app2.key"), "--cert-out", renewed); code != 0 {
		t.Fatalf("workload renewing its own SVID: %s", stderr)
	}
	// Another identity, and anything else, is denied.
	if _, stderr, code := asWorkload("ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/web/other", "--key-out", filepath.Join(dir, "o.key"), "--cert-out", filepath.Join(dir, "o.pem")); code != 1 || !strings.Contains(stderr, "spiffe://sigil.test/ns/web/other") {
		t.Errorf("workload asking for another identity: %d %s", code, stderr)
	}
	if _, stderr, code := asWorkload("ca", "list"); code != 1 || !strings.Contains(stderr, "ca/certs") {
		t.Errorf("workload listing certificates: %d %s", code, stderr)
	}
	// Revoked: refused outright.
	if _, stderr, code := d.cli(t, "ca", "revoke", serial); code != 0 {
		t.Fatalf("revoke: %s", stderr)
	}
	if _, stderr, code := asWorkload("ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/web/app", "--key-out", filepath.Join(dir, "r.key"), "--cert-out", filepath.Join(dir, "r.pem")); code != 1 || !strings.Contains(stderr, "revoked") {
		t.Errorf("revoked SVID accepted: %d %s", code, stderr)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestJoinTokenEnrollment: a workload bootstraps with a one-time join token,
// then lives on its SVID alone.
func TestJoinTokenEnrollment(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	pol := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(pol, []byte("rules:\n  - path: \"ca/sign/workload\"\n    capabilities: [create]\nbindings:\n  spiffe_ids: [\"spiffe://sigil.test/ns/web/*\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "policy", "write", "web", pol); code != 0 {
		t.Fatalf("policy write: %s", stderr)
	}
	const id = "spiffe://sigil.test/ns/web/api"
	tok, stderr, code := d.cli(t, "identity", "join-token", "create", "--spiffe-id", id, "--ttl", "5m")
	tok = strings.TrimSpace(tok)
	if code != 0 || tok == "" {
		t.Fatalf("join-token create: %s", stderr)
	}
	noToken := func(args ...string) (string, string, int) {
		saved := d.exports["SIGIL_TOKEN"]
		d.exports["SIGIL_TOKEN"] = ""
		defer func() { d.exports["SIGIL_TOKEN"] = saved }()
		return d.cli(t, args...)
	}
	// The join token enrolls its own ID only...
	if _, stderr, code := noToken("identity", "enroll", "--join-token", tok, "--spiffe-id", "spiffe://sigil.test/ns/web/other",
		"--key-out", filepath.Join(dir, "x.key"), "--cert-out", filepath.Join(dir, "x.pem")); code != 1 || !strings.Contains(stderr, id) {
		t.Fatalf("enroll for another ID: %d %s", code, stderr)
	}
	// ...and works once: the failed attempt above already spent it.
	tok2, _, _ := d.cli(t, "identity", "join-token", "create", "--spiffe-id", id)
	tok2 = strings.TrimSpace(tok2)
	key, cert := filepath.Join(dir, "api.key"), filepath.Join(dir, "api.pem")
	if _, stderr, code := noToken("identity", "enroll", "--join-token", tok2, "--spiffe-id", id, "--key-out", key, "--cert-out", cert); code != 0 {
		t.Fatalf("enroll: %s", stderr)
	}
	if _, stderr, code := noToken("identity", "enroll", "--join-token", tok2, "--spiffe-id", id, "--key-out", key+"2", "--cert-out", cert+"2"); code != 1 || !strings.Contains(stderr, "already used") {
		t.Fatalf("second use of a join token: %d %s", code, stderr)
	}
	// A join token is no API token.
	if _, stderr, code := noToken("ca", "list", "--token", tok); code != 1 {
		t.Errorf("join token used as API token: %d %s", code, stderr)
	}
	// The SVID renews itself.
	if _, stderr, code := noToken("identity", "renew", "--client-cert", cert, "--client-key", key, "--spiffe-id", id,
		"--key-out", filepath.Join(dir, "api2.key"), "--cert-out", filepath.Join(dir, "api2.pem")); code != 0 {
		t.Fatalf("identity renew: %s", stderr)
	}
}
