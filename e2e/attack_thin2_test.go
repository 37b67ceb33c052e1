package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAttackThin2WorkloadSelfRenew: a workload with no policy at all renews
// its own SVID (the README's promise), but its certificate gets it no
// other SPIFFE ID: anything but its own identity still needs create on
// ca/sign/workload.
func TestAttackThin2WorkloadSelfRenew(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	const id = "spiffe://sigil.test/ns/lonely/api"
	tok, stderr, code := d.cli(t, "identity", "join-token", "create", "--spiffe-id", id)
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
	key, cert := filepath.Join(dir, "api.key"), filepath.Join(dir, "api.pem")
	if _, stderr, code := noToken("identity", "enroll", "--join-token", tok, "--spiffe-id", id, "--key-out", key, "--cert-out", cert); code != 0 {
		t.Fatalf("enroll: %s", stderr)
	}
	renew := func(with, spiffeID, out string) (string, int) {
		_, stderr, code := noToken("identity", "renew", "--client-cert", with+".pem", "--client-key", with+".key", "--spiffe-id", spiffeID,
			"--key-out", out+".key", "--cert-out", out+".pem")
		return stderr, code
	}
	base := filepath.Join(dir, "api")
	tests := []struct {
		name, with, spiffeID, out string
		refusal                   string // "" when the renewal succeeds
	}{
		{"own identity", base, id, filepath.Join(dir, "r1"), ""},
		{"own identity again, with the renewed SVID", filepath.Join(dir, "r1"), id, filepath.Join(dir, "r2"), ""},
		{"a sibling identity", base, "spiffe://sigil.test/ns/lonely/admin", filepath.Join(dir, "x1"), "permission denied"},
		{"another trust domain's path", filepath.Join(dir, "r2"), "spiffe://other.test/ns/lonely/api", filepath.Join(dir, "x2"), "outside trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stderr, code := renew(tt.with, tt.spiffeID, tt.out)
			if tt.refusal == "" {
				if code != 0 {
					t.Fatalf("renew %s: %d %s", tt.spiffeID, code, stderr)
				}
				pem, err := os.ReadFile(tt.out + ".pem")
				if err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
					t.Fatalf("renewed certificate: %v", err)
				}
				return
			}
			if code == 0 || !strings.Contains(stderr, tt.refusal) {
				t.Fatalf("renew as %s without a grant: %d %s", tt.spiffeID, code, stderr)
			}
			if _, err := os.Stat(tt.out + ".pem"); err == nil {
				t.Fatal("a certificate was written for another identity")
			}
		})
	}
}
