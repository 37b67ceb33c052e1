package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAttackSVIDOutlivesGrant: an X.509-SVID minted under a lease (the
// keys engine's issue_certificate with the workload profile) authenticates
// its holder over mTLS, but gets it nothing that outlives the lease.
// Before the fix, it renewed itself with no grant into an endless series
// of certificates (revoking the lease revoked only the first), and a
// token it created lived for tokens.max_ttl (32 days) although the SVID
// expired within the hour.
func TestAttackSVIDOutlivesGrant(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	pol := filepath.Join(dir, "svc.yaml")
	if err := os.WriteFile(pol, []byte(`rules:
  - path: "sys/tokens"
    capabilities: [create, sudo]
bindings:
  spiffe_ids: ["spiffe://sigil.test/keys/*"]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"policy", "write", "svc", pol},
		{"engine", "enable", "keys", "--mount", "keys"},
		{"role", "write", "keys/svc", "key_type=ecdsa-p256", "ttl=1h", "max_ttl=1h", "issue_certificate=true", "profile=workload",
			"uri_sans=spiffe://sigil.test/keys/{{role}}"},
	} {
		if _, stderr, code := d.cli(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	c := mintKeys(t, d, "keys/svc")
	key, cert := filepath.Join(dir, "svc.key"), filepath.Join(dir, "svc.pem")
	if err := os.WriteFile(key, []byte(c.Data["private_key"]), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert, []byte(c.Public["certificate"]), 0o600); err != nil {
		t.Fatal(err)
	}
	notAfter := leafFrom(t, c.Public["certificate"]).NotAfter
	asWorkload := func(args ...string) (string, string, int) {
		saved := d.exports["SIGIL_TOKEN"]
		d.exports["SIGIL_TOKEN"] = ""
		defer func() { d.exports["SIGIL_TOKEN"] = saved }()
		return d.cli(t, append(args, "--client-cert", cert, "--client-key", key)...)
	}

	t.Run("no self-renewal past the lease", func(t *testing.T) {
		out := filepath.Join(dir, "renewed")
		_, stderr, code := asWorkload("identity", "renew", "--spiffe-id", "spiffe://sigil.test/keys/svc",
			"--key-out", out+".key", "--cert-out", out+".pem")
		if code == 0 {
			t.Fatal("a lease-bound SVID renewed itself")
		}
		for _, want := range []string{"permission denied", "issued under " + c.LeaseID} {
			if !strings.Contains(stderr, want) {
				t.Errorf("refusal does not say %q: %s", want, stderr)
			}
		}
		if _, err := os.Stat(out + ".pem"); err == nil {
			t.Fatal("a renewed certificate was written")
		}
	})

	t.Run("a token it creates ends with the SVID", func(t *testing.T) {
		out, stderr, code := asWorkload("token", "create", "--policy", "svc", "--ttl", "720h", "--format", "json")
		if code != 0 {
			t.Fatalf("token create as the SVID: %s", stderr)
		}
		var tok struct {
			ExpiresAt time.Time `json:"expires_at"`
		}
		if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.ExpiresAt.IsZero() {
			t.Fatalf("token create output %q: %v", out, err)
		}
		if tok.ExpiresAt.After(notAfter) {
			t.Errorf("the SVID's token expires at %s, after the SVID itself (%s)", tok.ExpiresAt, notAfter)
		}
		if !strings.Contains(stderr, "ttl capped") {
			t.Errorf("no warning that --ttl was capped: %s", stderr)
		}
	})

	t.Run("revoked with its lease", func(t *testing.T) {
		if _, stderr, code := d.cli(t, "lease", "revoke", c.LeaseID); code != 0 {
			t.Fatal(stderr)
		}
		if _, stderr, code := asWorkload("token", "create", "--policy", "svc", "--format", "json"); code == 0 || !strings.Contains(stderr, "revoked") {
			t.Errorf("the revoked SVID still authenticates: %d %s", code, stderr)
		}
	})
}

// TestAttackJoinTokenScope: create on sys/identity/join-tokens lets its
// holder enroll only the SPIFFE IDs its policies allow as names, as for
// issuing those SVIDs directly. Before the fix it enrolled any identity,
// among them one bound to an administrator's policy, and so obtained that
// policy.
func TestAttackJoinTokenScope(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	for name, doc := range map[string]string{
		"joiner":         "rules:\n  - path: \"sys/identity/join-tokens\"\n    capabilities: [create, sudo]\nnames:\n  uris: [\"spiffe://sigil.test/ns/web/*\"]\n",
		"joiner-nonames": "rules:\n  - path: \"sys/identity/join-tokens\"\n    capabilities: [create, sudo]\n",
		"admin":          "rules:\n  - path: \"**\"\n    capabilities: [create, read, update, delete, list, sudo]\nbindings:\n  spiffe_ids: [\"spiffe://sigil.test/ops/admin\"]\n",
	} {
		f := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, stderr, code := d.cli(t, "policy", "write", name, f); code != 0 {
			t.Fatalf("policy write %s: %s", name, stderr)
		}
	}
	joiner, _ := tokensAttackToken(t, d, "--policy", "joiner")
	nonames, _ := tokensAttackToken(t, d, "--policy", "joiner-nonames")
	tests := []struct {
		name, token, id string
		refused         bool
	}{
		{"an ID its names allow", joiner, "spiffe://sigil.test/ns/web/api", false},
		{"the administrator's ID", joiner, "spiffe://sigil.test/ops/admin", true},
		{"a policy without names", nonames, "spiffe://sigil.test/ns/web/api", true},
		{"a policy without names, the administrator's ID", nonames, "spiffe://sigil.test/ops/admin", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, code := tokensAttackAs(t, d, tt.token, "identity", "join-token", "create", "--spiffe-id", tt.id)
			if !tt.refused {
				if code != 0 || strings.TrimSpace(stdout) == "" {
					t.Fatalf("join-token create for %s: %d %s", tt.id, code, stderr)
				}
				return
			}
			tokensAttackRefused(t, "join token for "+tt.id, stdout, stderr, code, "PermissionDenied", tt.id, "names")
		})
	}
}
