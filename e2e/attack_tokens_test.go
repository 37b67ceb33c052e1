package e2e

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// Attack replays for the token and lease findings of the 2026-12 security
// review (#4, #7, #13) and the silently accepted bad inputs of the UX
// review §3, through the built binary (and raw gRPC where the CLI cannot
// send the value).

// tokensAttackPolicies are the grants the replays use, written as root.
var tokensAttackPolicies = map[string]string{
	// #4: the documented token-issuing permission.
	"tokadmin": "rules:\n  - path: \"sys/tokens\"\n    capabilities: [create, sudo]\n",
	"signer":   "rules:\n  - path: \"ca/sign/*\"\n    capabilities: [create]\n",
	// #7: lease housekeeping.
	"leasemgr": "rules:\n  - path: \"leases/**\"\n    capabilities: [read, update, delete]\n",
	// #13: a workload that mints and manages leases of svc/.
	"worker": "rules:\n  - path: \"svc/creds/*\"\n    capabilities: [read]\n  - path: \"leases/svc/**\"\n    capabilities: [read, update, delete]\n",
	// #13: an administrator of everyone's leases.
	"leaseadmin": "rules:\n  - path: \"sys/leases/**\"\n    capabilities: [read, update, delete, sudo]\n",
}

// tokensAttackToken creates a token as root and returns its secret and id.
func tokensAttackToken(t *testing.T, d *devServer, args ...string) (tok, id string) {
	t.Helper()
	out, stderr, code := d.cli(t, append([]string{"token", "create", "--format", "json"}, args...)...)
	var r struct{ Token, ID string }
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.Token == "" {
		t.Fatalf("token create %v: %d %s %s", args, code, out, stderr)
	}
	return r.Token, r.ID
}

// tokensAttackAs runs the CLI as token instead of root.
func tokensAttackAs(t *testing.T, d *devServer, token string, args ...string) (string, string, int) {
	t.Helper()
	return d.cli(t, append(args, "--token", token)...)
}

// tokensAttackRefused fails unless the command failed with stderr naming
// every one of want.
func tokensAttackRefused(t *testing.T, what, stdout, stderr string, code int, want ...string) {
	t.Helper()
	if code == 0 {
		t.Fatalf("%s: accepted (stdout %q)", what, stdout)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Fatalf("%s: refused, but the error does not say %q: %s", what, w, stderr)
		}
	}
}

func TestAttackTokens(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	for name, doc := range tokensAttackPolicies {
		f := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, stderr, code := d.cli(t, "policy", "write", name, f); code != 0 {
			t.Fatalf("policy write %s: %s", name, stderr)
		}
	}
	for _, args := range [][]string{
		{"engine", "enable", "tokens", "--mount", "svc"},
		{"role", "write", "svc/r", "ttl=1h", "max_ttl=2h"},
	} {
		if _, stderr, code := d.cli(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}

	// Review #4: sys/tokens create+sudo minted a root token.
	t.Run("4 token creation delegates, never escalates", func(t *testing.T) {
		ta, _ := tokensAttackToken(t, d, "--policy", "tokadmin", "--ttl", "1h")
		stdout, stderr, code := tokensAttackAs(t, d, ta, "token", "create", "--policy", "root", "--format", "json")
		tokensAttackRefused(t, "tokadmin mints root", stdout, stderr, code, "PermissionDenied", "sys/tokens/root")
		stdout, stderr, code = tokensAttackAs(t, d, ta, "token", "create", "--policy", "signer", "--format", "json")
		tokensAttackRefused(t, "tokadmin grants a policy it lacks", stdout, stderr, code, "PermissionDenied", `policy "signer" is not held`)
		stdout, stderr, code = tokensAttackAs(t, d, ta, "token", "create", "--policy", "tokadmin", "--policy", "root", "--format", "json")
		tokensAttackRefused(t, "tokadmin hides root among its own policies", stdout, stderr, code, "sys/tokens/root")
		stdout, stderr, code = d.cli(t, "token", "create", "--policy", "no-such-policy", "--format", "json")
		tokensAttackRefused(t, "a nonexistent policy", stdout, stderr, code, "InvalidArgument", `policy "no-such-policy" does not exist`)

		// A subset is delegation: allowed, but never outliving the parent.
		parent, _, _ := tokensAttackAs(t, d, ta, "token", "lookup", "--format", "json")
		var pinfo struct {
			ExpiresAt time.Time `json:"expires_at"`
		}
		if err := json.Unmarshal([]byte(parent), &pinfo); err != nil || pinfo.ExpiresAt.IsZero() {
			t.Fatalf("token lookup: %q %v", parent, err)
		}
		stdout, stderr, code = tokensAttackAs(t, d, ta, "token", "create", "--policy", "tokadmin", "--ttl", "10h", "--format", "json")
		var child struct {
			Token     string
			Policies  []string
			ExpiresAt time.Time `json:"expires_at"`
		}
		if code != 0 || json.Unmarshal([]byte(stdout), &child) != nil || child.Token == "" {
			t.Fatalf("tokadmin creating a tokadmin child: %d %s %s", code, stdout, stderr)
		}
		if child.ExpiresAt.IsZero() || child.ExpiresAt.After(pinfo.ExpiresAt) {
			t.Fatalf("child expires %v, after its parent's %v", child.ExpiresAt, pinfo.ExpiresAt)
		}
		if !strings.Contains(stderr, "ttl capped") {
			t.Fatalf("the capped TTL is not reported: %q", stderr)
		}

		// Uses: a child never has more uses left than its parent.
		tu, _ := tokensAttackToken(t, d, "--policy", "tokadmin", "--uses", "3")
		stdout, stderr, code = tokensAttackAs(t, d, tu, "token", "create", "--policy", "tokadmin", "--uses", "100", "--format", "json")
		var uchild struct {
			UsesLeft int `json:"uses_left"`
		}
		if code != 0 || json.Unmarshal([]byte(stdout), &uchild) != nil {
			t.Fatalf("limited parent creating a child: %d %s %s", code, stdout, stderr)
		}
		if uchild.UsesLeft < 1 || uchild.UsesLeft > 2 {
			t.Fatalf("child of a 3-use token (one use spent creating it) has %d uses", uchild.UsesLeft)
		}

		// The root token still creates root tokens.
		if _, stderr, code := d.cli(t, "token", "create", "--policy", "root", "--ttl", "1h"); code != 0 {
			t.Fatalf("root creating a root token: %s", stderr)
		}
	})

	// Review #7: leases/** revoked and inspected API tokens.
	t.Run("7 token leases only through sys/tokens", func(t *testing.T) {
		victim, victimID := tokensAttackToken(t, d, "--policy", "signer", "--ttl", "1h")
		lm, _ := tokensAttackToken(t, d, "--policy", "leasemgr", "--ttl", "1h")
		for _, args := range [][]string{
			{"lease", "lookup", "auth/token/" + victimID},
			{"lease", "renew", "auth/token/" + victimID},
			{"lease", "revoke", "auth/token/" + victimID},
			{"lease", "revoke", "--prefix", "auth"},
			{"lease", "revoke", "--prefix", "auth/token/"},
		} {
			stdout, stderr, code := tokensAttackAs(t, d, lm, args...)
			tokensAttackRefused(t, strings.Join(args, " "), stdout, stderr, code, "PermissionDenied", "sys/tokens")
		}
		if _, stderr, code := tokensAttackAs(t, d, victim, "token", "lookup"); code != 0 {
			t.Fatalf("the victim token was logged out: %s", stderr)
		}
		// The root token manages token leases as before (sys/tokens).
		if out, stderr, code := d.cli(t, "lease", "lookup", "auth/token/"+victimID); code != 0 || !strings.Contains(out, victimID) {
			t.Fatalf("root lease lookup of a token: %s %s", out, stderr)
		}
	})

	// Review #13: any leases/<prefix> grant reached other identities' leases.
	t.Run("13 leases have owners", func(t *testing.T) {
		wa, _ := tokensAttackToken(t, d, "--policy", "worker", "--ttl", "1h")
		wb, _ := tokensAttackToken(t, d, "--policy", "worker", "--ttl", "1h")
		admin, _ := tokensAttackToken(t, d, "--policy", "leaseadmin", "--ttl", "1h")
		mint := func(tok string) string {
			out, stderr, code := tokensAttackAs(t, d, tok, "creds", "svc/r", "--format", "json")
			var c struct {
				LeaseID string `json:"lease_id"`
			}
			if code != 0 || json.Unmarshal([]byte(out), &c) != nil || c.LeaseID == "" {
				t.Fatalf("creds svc/r: %d %s %s", code, out, stderr)
			}
			return c.LeaseID
		}
		la, lb := mint(wa), mint(wb)
		for _, args := range [][]string{
			{"lease", "lookup", la},
			{"lease", "renew", la},
			{"lease", "revoke", la},
		} {
			stdout, stderr, code := tokensAttackAs(t, d, wb, args...)
			tokensAttackRefused(t, "B: "+strings.Join(args, " "), stdout, stderr, code, "PermissionDenied", "another identity", "sys/leases/")
		}
		// A path grant over every lease is not ownership either.
		lm, _ := tokensAttackToken(t, d, "--policy", "leasemgr", "--ttl", "1h")
		stdout, stderr, code := tokensAttackAs(t, d, lm, "lease", "revoke", la)
		tokensAttackRefused(t, "leasemgr revokes A's lease", stdout, stderr, code, "PermissionDenied", "another identity")

		// A manages its own lease.
		for _, args := range [][]string{{"lease", "lookup", la}, {"lease", "renew", la}} {
			if _, stderr, code := tokensAttackAs(t, d, wa, args...); code != 0 {
				t.Fatalf("A: %v: %s", args, stderr)
			}
		}
		// An administrator (sys/leases with sudo) manages anyone's.
		if out, stderr, code := tokensAttackAs(t, d, admin, "lease", "lookup", lb, "--format", "json"); code != 0 || !strings.Contains(out, `"state": "active"`) {
			t.Fatalf("leaseadmin lookup of B's lease: %s %s", out, stderr)
		}
		if _, stderr, code := tokensAttackAs(t, d, admin, "lease", "revoke", lb); code != 0 {
			t.Fatalf("leaseadmin revokes B's lease: %s", stderr)
		}
		if _, stderr, code := tokensAttackAs(t, d, wa, "lease", "revoke", la); code != 0 {
			t.Fatalf("A revokes its own lease: %s", stderr)
		}
		for _, id := range []string{la, lb} {
			if out, _, _ := d.cli(t, "lease", "lookup", id, "--format", "json"); !strings.Contains(out, `"state": "revoked"`) {
				t.Fatalf("lease %s not revoked: %s", id, out)
			}
		}
	})

	// UX review §3: inputs that were silently accepted.
	t.Run("bad inputs", func(t *testing.T) {
		tests := []struct {
			name string
			args []string
			want []string
		}{
			// Returned the secret unwrapped, in clear.
			{"creds --wrap-ttl -1m", []string{"creds", "svc/r", "--wrap-ttl", "-1m"}, []string{"--wrap-ttl", "must not be negative"}},
			{"creds --wrap-ttl 1ns", []string{"creds", "svc/r", "--wrap-ttl", "1ns"}, []string{"--wrap-ttl", "shorter than the minimum"}},
			{"token --wrap-ttl -1m", []string{"token", "create", "--policy", "signer", "--wrap-ttl", "-1m"}, []string{"--wrap-ttl"}},
			// 293-year tokens: the CLI refuses them before the server does.
			{"token --ttl 2562047h", []string{"token", "create", "--policy", "signer", "--ttl", "2562047h"}, []string{"--ttl", "longer than the maximum"}},
			{"token --ttl 769h", []string{"token", "create", "--policy", "signer", "--ttl", "769h"}, []string{"InvalidArgument", "exceeds tokens.max_ttl 768h"}},
			{"token --wrap-ttl 2562047h", []string{"token", "create", "--policy", "signer", "--wrap-ttl", "2562047h"}, []string{"--wrap-ttl", "longer than the maximum"}},
			{"creds --wrap-ttl 2562047h", []string{"creds", "svc/r", "--wrap-ttl", "2562047h"}, []string{"--wrap-ttl", "longer than the maximum"}},
			// A mount that turns its paths administrative or shadows the API.
			{"mount sys", []string{"engine", "enable", "transit", "--mount", "sys"}, []string{"InvalidArgument", `"sys" is reserved`}},
			{"mount leases", []string{"engine", "enable", "transit", "--mount", "leases"}, []string{"InvalidArgument", "reserved"}},
			{"mount ca", []string{"engine", "enable", "keys", "--mount", "ca"}, []string{"InvalidArgument", "reserved"}},
			{"mount acme", []string{"engine", "enable", "transit", "--mount", "acme"}, []string{"InvalidArgument", "reserved"}},
			{"mount SYS/x", []string{"engine", "enable", "transit", "--mount", "SYS/x"}, []string{"InvalidArgument", "reserved"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				stdout, stderr, code := d.cli(t, tc.args...)
				tokensAttackRefused(t, tc.name, stdout, stderr, code, tc.want...)
				if strings.Contains(stdout, "sgl_") || strings.Contains(stdout, "sgt_") {
					t.Fatalf("a secret was printed: %s", stdout)
				}
			})
		}
		// An ordinary mount name still works.
		if _, stderr, code := d.cli(t, "engine", "enable", "transit", "--mount", "system"); code != 0 {
			t.Fatalf("mount system: %s", stderr)
		}
	})

	// INT64 overflows the CLI cannot send: seconds × 10⁹ wrapped into a
	// negative TTL, which made a token that never expires.
	t.Run("int64 overflows", func(t *testing.T) {
		conn, ctx := d.grpcConn(t)
		_, rcpt, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
		if err != nil {
			t.Fatal(err)
		}
		r := &sigilv1.Recipient{Kem: uint32(rcpt.KEM), PublicKey: rcpt.PublicKey}
		tokens := sigilv1.NewTokenServiceClient(conn)
		engines := sigilv1.NewEngineServiceClient(conn)
		tests := []struct {
			name string
			call func() error
			want string
		}{
			{"token ttl_seconds MaxInt64", func() error {
				_, err := tokens.Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"signer"}, TtlSeconds: math.MaxInt64, Recipient: r})
				return err
			}, "ttl_seconds"},
			{"token ttl_seconds 2^34 (wraps to a positive duration)", func() error {
				_, err := tokens.Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"signer"}, TtlSeconds: 1 << 34, Recipient: r})
				return err
			}, "ttl_seconds"},
			{"token wrap_ttl_seconds MaxInt64", func() error {
				_, err := tokens.Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"signer"}, WrapTtlSeconds: math.MaxInt64})
				return err
			}, "wrap_ttl_seconds"},
			{"creds ttl_seconds MaxInt64", func() error {
				_, err := engines.Creds(ctx, &sigilv1.CredsRequest{Mount: "svc", Role: "r", TtlSeconds: math.MaxInt64, Recipient: r})
				return err
			}, "ttl_seconds"},
			{"creds wrap_ttl_seconds MaxInt64", func() error {
				_, err := engines.Creds(ctx, &sigilv1.CredsRequest{Mount: "svc", Role: "r", WrapTtlSeconds: math.MaxInt64})
				return err
			}, "wrap_ttl_seconds"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				err := tc.call()
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
					t.Fatalf("got %v, want InvalidArgument naming %s", err, tc.want)
				}
			})
		}
	})
}
