package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/internal/testharness"
)

// deployProdNode starts a production (sealed, Shamir) node on dir/data
// with its own listener certificate, initialises it with one share and
// returns it with that share.
func deployProdNode(t *testing.T, dir string) (*devServer, string) {
	t.Helper()
	listenerCA, cert, key := listenerTLS(t, dir)
	d := startServer(t, filepath.Join(dir, "data"), false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	out, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
	var initResp struct {
		Shares    []string `json:"shares"`
		RootToken string   `json:"root_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &initResp) != nil || len(initResp.Shares) != 1 || initResp.RootToken == "" {
		t.Fatalf("operator init: %s %s", out, stderr)
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	return d, initResp.Shares[0]
}

// deployMust runs a CLI command that must succeed and returns its stdout.
func deployMust(t *testing.T, d *devServer, args ...string) string {
	t.Helper()
	out, stderr, code := d.cli(t, args...)
	if code != 0 {
		t.Fatalf("sigil %v: code %d: %s", args, code, stderr)
	}
	return strings.TrimSpace(out)
}

// deployRootFingerprint is the SHA-256 of the served root certificate.
func deployRootFingerprint(t *testing.T, d *devServer) string {
	t.Helper()
	root := leafFrom(t, deployMust(t, d, "ca", "root"))
	sum := sha256.Sum256(root.Raw)
	return hex.EncodeToString(sum[:])
}

// TestDeploySnapshotRestore: a node with a CA, a kv secret, a transit key
// and a minted database credential is snapshotted online; the snapshot
// holds none of the secrets in any encoding (the barrier seals them);
// restored onto a fresh node's data directory, the node starts sealed,
// unseals with the original share and serves the same root, the kv secret,
// and decrypts the transit ciphertext. A damaged snapshot and a restore
// under a running server are refused without touching the data directory.
func TestDeploySnapshotRestore(t *testing.T) {
	needOpenSSL(t)
	target := newPGTarget(t)
	dir1 := t.TempDir()
	d1, share := deployProdNode(t, dir1)
	deployMust(t, d1, "ca", "init", "--common-name", "Snapshot Test CA")
	fingerprint := deployRootFingerprint(t, d1)

	const kvValue = "deploy-kv-canary-7f3a91c2e4b8"
	deployMust(t, d1, "engine", "enable", "kv", "--mount", "kv")
	deployMust(t, d1, "kv", "put", "kv/app/db", "password="+kvValue)
	deployMust(t, d1, "engine", "enable", "transit", "--mount", "transit")
	deployMust(t, d1, "transit", "create", "transit/orders")
	const plaintext = "deploy-transit-plaintext-55c1"
	ct, stderr, code := d1.cliStdin(t, plaintext, "transit", "encrypt", "transit/orders")
	if code != 0 {
		t.Fatalf("transit encrypt: %s", stderr)
	}
	ct = strings.TrimSpace(ct)
	setupPGMount(t, d1, "db", target.dsn)
	cred := mintCreds(t, d1, "db/readonly")

	snap := filepath.Join(t.TempDir(), "node1.snap")
	out := deployMust(t, d1, "operator", "snapshot", "save", snap, "--format", "json")
	var saved struct {
		SHA256 string `json:"sha256"`
		Size   int64  `json:"size"`
	}
	if err := json.Unmarshal([]byte(out), &saved); err != nil || len(saved.SHA256) != 64 || saved.Size == 0 {
		t.Fatalf("snapshot save output %q: %v", out, err)
	}
	data, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(snap); fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode %v, want 0600", fi.Mode().Perm())
	}
	// The scan reads the real database: the credential's lease id and the
	// kv path are stored in clear, the secrets are not.
	for _, present := range []string{cred.LeaseID, "app/db", "Snapshot Test CA"} {
		if !bytes.Contains(data, []byte(present)) {
			t.Fatalf("the snapshot lacks %q: it is not the node's database", present)
		}
	}
	var needles []needle
	needles = append(needles, secretNeedles("kv secret value", []byte(kvValue))...)
	needles = append(needles, secretNeedles("minted database password", []byte(cred.Data.Password))...)
	needles = append(needles, secretNeedles("root token", []byte(d1.exports["SIGIL_TOKEN"]))...)
	scan(t, "snapshot", data, needles)

	// Damaged and foreign files are refused before anything is written.
	bad := filepath.Join(t.TempDir(), "bad.snap")
	flipped := bytes.Clone(data)
	flipped[len(flipped)-100] ^= 0xff
	for _, tc := range []struct {
		name, want string
		content    []byte
	}{
		{"flipped byte", "SHA-256 mismatch", flipped},
		{"truncated", "truncated", data[:len(data)-10]},
		{"not a snapshot", "does not start with", []byte("SQLite format 3\x00 nothing else")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(bad, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			fresh := filepath.Join(t.TempDir(), "data")
			_, stderr, code := ux2Run(t, "operator", "snapshot", "restore", bad, "--data", fresh)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("restore of a %s file: code %d, stderr %q; want a failure mentioning %q", tc.name, code, stderr, tc.want)
			}
			if _, err := os.Stat(filepath.Join(fresh, "sigil.db")); err == nil {
				t.Fatal("a refused restore left a database behind")
			}
		})
	}
	// A running node's data directory is not restored under it.
	_, stderr, code = ux2Run(t, "operator", "snapshot", "restore", snap, "--data", filepath.Join(dir1, "data"))
	if code != 1 || !strings.Contains(stderr, "in use by a running sigil server") {
		t.Fatalf("restore under a running server: code %d %s", code, stderr)
	}
	// Without --data the user learns restore is offline.
	if _, stderr, code := ux2Run(t, "operator", "snapshot", "restore", snap); code != 2 || !strings.Contains(stderr, "--data") {
		t.Fatalf("restore without --data: code %d %s", code, stderr)
	}

	// A fresh node: restore into its data directory, start, unseal.
	dir2 := t.TempDir()
	data2 := filepath.Join(dir2, "data")
	out, stderr, code = ux2Run(t, "operator", "snapshot", "restore", snap, "--data", data2)
	if code != 0 || !strings.Contains(out, "restored") {
		t.Fatalf("restore: code %d: %s %s", code, out, stderr)
	}
	listenerCA, cert, key := listenerTLS(t, dir2)
	d2 := startServer(t, data2, false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	d2.exports["SIGIL_TOKEN"] = d1.exports["SIGIL_TOKEN"]
	if _, stderr, code := d2.cli(t, "kv", "get", "kv/app/db"); code != 1 || !strings.Contains(strings.ToLower(stderr), "sealed") {
		t.Fatalf("a restored node served before unseal: code %d %s", code, stderr)
	}
	deployMust(t, d2, "operator", "unseal", share)
	if got := deployRootFingerprint(t, d2); got != fingerprint {
		t.Fatalf("restored node serves root %s, node 1 served %s", got, fingerprint)
	}
	if got := deployMust(t, d2, "kv", "get", "kv/app/db", "--field", "password"); got != kvValue {
		t.Fatalf("restored kv secret = %q", got)
	}
	if got := deployMust(t, d2, "transit", "decrypt", "transit/orders", ct); got != plaintext {
		t.Fatalf("restored transit key decrypts to %q", got)
	}
	if l := lookupLease(t, d2, cred.LeaseID); l.ID != cred.LeaseID {
		t.Fatalf("restored lease %+v", l)
	}
	// The restored node issues with the same hierarchy.
	deployMust(t, d2, "ca", "list")
}

// TestDeploySnapshotRefusedOnPostgres: on PostgreSQL the RPC refuses and
// says what to use instead.
func TestDeploySnapshotRefusedOnPostgres(t *testing.T) {
	dsn := testharness.StartPostgres(t)
	d := startDev(t, filepath.Join(t.TempDir(), "data"), "--storage", dsn)
	snap := filepath.Join(t.TempDir(), "pg.snap")
	_, stderr, code := d.cli(t, "operator", "snapshot", "save", snap)
	if code != 1 || !strings.Contains(stderr, "FailedPrecondition") || !strings.Contains(stderr, "pg_dump") {
		t.Fatalf("snapshot save on PostgreSQL: code %d %s", code, stderr)
	}
	if _, err := os.Stat(snap); err == nil {
		t.Fatal("a refused save left a file")
	}
	if _, err := os.Stat(snap + ".partial"); err == nil {
		t.Fatal("a refused save left a partial file")
	}
}
