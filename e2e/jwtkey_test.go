package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// TestAttackAgentJWTKeyRotate: only a holder of update on sys/agent/jwt-key
// rotates the JWT-SVID key. Neither a node's SVID, nor a token with read
// there, nor one with update on every entry may; the root token can, and the
// bundle nodes fetch follows: the new key is published beside the old one,
// and --retire-previous leaves only the new one.
func TestAttackAgentJWTKeyRotate(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const node = "spiffe://sigil.test/node/a"
	agentEntry(t, d, node, "spiffe://sigil.test/ns/app", "--selector", "unix:uid:0")
	nodeClient := sigilv1.NewAgentServiceClient(agentAttackNodeConn(t, d, node))
	bundleKids := func() []string {
		t.Helper()
		b, err := nodeClient.GetBundle(ctx, &sigilv1.GetBundleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return kidsOfJWKS(t, b.GetJwks())
	}
	before := bundleKids()
	if len(before) != 1 {
		t.Fatalf("bundle before any rotation holds %v, want one key", before)
	}

	// Refused: a node, and tokens whose grant is near but not it.
	if _, err := nodeClient.RotateJWTKey(ctx, &sigilv1.RotateJWTKeyRequest{}); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Errorf("a node SVID rotating the JWT key: %v, want PermissionDenied", err)
	}
	for name, rules := range map[string]string{
		"jwt-read":    "rules:\n  - path: \"sys/agent/jwt-key\"\n    capabilities: [read, list]\n",
		"entries-all": "rules:\n  - path: \"sys/agent/entries/*\"\n    capabilities: [create, update, delete, sudo]\n",
		"jwt-prefix":  "rules:\n  - path: \"sys/agent/jwt-key/*\"\n    capabilities: [update, sudo]\n",
	} {
		mtlsAttackWritePolicy(t, d, name, rules)
		out, stderr, code := d.cli(t, "token", "create", "--policy", name, "--format", "json")
		var resp struct{ Token string }
		if code != 0 || json.Unmarshal([]byte(out), &resp) != nil || resp.Token == "" {
			t.Fatalf("token create: %s %s", out, stderr)
		}
		if _, stderr, code := d.cli(t, "agent", "jwt-key", "rotate", "--token", resp.Token); code != 1 || !strings.Contains(stderr, "sys/agent/jwt-key") {
			t.Errorf("policy %s rotated the JWT key: exit %d %s", name, code, stderr)
		}
	}
	if got := bundleKids(); !slices.Equal(got, before) {
		t.Fatalf("refused rotations changed the bundle: %v -> %v", before, got)
	}

	type keyView struct {
		KID    string `json:"kid"`
		Active bool   `json:"active"`
	}
	rotate := func(args ...string) []keyView {
		t.Helper()
		out := kvMust(t, d, append([]string{"agent", "jwt-key", "rotate", "--format", "json"}, args...)...)
		var keys []keyView
		if err := json.Unmarshal([]byte(out), &keys); err != nil {
			t.Fatalf("%v: %q", err, out)
		}
		return keys
	}
	keys := rotate()
	if len(keys) != 2 || keys[0].KID != before[0] || keys[0].Active || !keys[1].Active || keys[1].KID == before[0] {
		t.Fatalf("after rotate: %+v, want the old key published and a new one signing", keys)
	}
	if got := bundleKids(); !slices.Equal(got, []string{keys[0].KID, keys[1].KID}) {
		t.Fatalf("bundle after rotate = %v, want both keys", got)
	}
	keys = rotate("--retire-previous")
	if len(keys) != 1 || !keys[0].Active || slices.Contains(before, keys[0].KID) {
		t.Fatalf("after rotate --retire-previous: %+v, want one new key", keys)
	}
	if got := bundleKids(); !slices.Equal(got, []string{keys[0].KID}) {
		t.Fatalf("bundle after --retire-previous = %v, want only %s", got, keys[0].KID)
	}
}

func kidsOfJWKS(t *testing.T, jwks []byte) []string {
	t.Helper()
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatalf("JWKS %q: %v", jwks, err)
	}
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KID)
	}
	return out
}
