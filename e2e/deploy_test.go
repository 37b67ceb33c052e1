package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

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
	// A token without the grant is refused, writes no file, and the
	// refusal is audited (the streaming call bypasses the unary audit).
	policyFile := filepath.Join(t.TempDir(), "kv-only.yaml")
	if err := os.WriteFile(policyFile, []byte("rules:\n  - path: kv/data/*\n    capabilities: [read]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deployMust(t, d1, "policy", "write", "kv-only", policyFile)
	var weak struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(deployMust(t, d1, "token", "create", "--policy", "kv-only", "--format", "json")), &weak); err != nil || weak.Token == "" {
		t.Fatalf("token create: %v", err)
	}
	if _, stderr, code := d1.cli(t, "operator", "snapshot", "save", snap, "--token", weak.Token); code != 1 || !strings.Contains(stderr, "PermissionDenied") || !strings.Contains(stderr, "sys/storage/snapshot") {
		t.Fatalf("snapshot save without the grant: code %d %s", code, stderr)
	}
	if _, err := os.Stat(snap); err == nil {
		t.Fatal("a refused save wrote the file")
	}
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
	// The save is recorded, and the chain still verifies.
	deployMust(t, d1, "audit", "verify")
	if fi, _ := os.Stat(snap); fi.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode %v, want 0600", fi.Mode().Perm())
	}
	// The scan reads the real database: the credential's lease id and the
	// kv path are stored in clear, the secrets are not.
	// The audit records of the refused save and of the save itself are
	// written before the copy.
	for _, present := range []string{cred.LeaseID, "app/db", "Snapshot Test CA", "/sigil.v1.SnapshotService/Save", "no policy grants read on sys/storage/snapshot"} {
		if !bytes.Contains(data, []byte(present)) {
			t.Fatalf("the snapshot lacks %q: not the node's data, or a save went unaudited", present)
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

// deployCompose is the part of a Compose file the checks read; decoding is
// strict on these fields' types, and unknown service keys are allowed
// (Compose has many).
type deployCompose struct {
	Name     string                          `yaml:"name"`
	Services map[string]deployComposeService `yaml:"services"`
	Volumes  map[string]any                  `yaml:"volumes"`
}

type deployComposeService struct {
	Image     string                                `yaml:"image"`
	Build     *struct{ Context, Dockerfile string } `yaml:"build"`
	Command   []string                              `yaml:"command"`
	Volumes   []string                              `yaml:"volumes"`
	Ports     []string                              `yaml:"ports"`
	DependsOn any                                   `yaml:"depends_on"`
}

// TestDeployComposeAndDockerfileStatic checks what can be checked without
// a Docker daemon: the Compose file parses (anchors and merges resolved),
// has PostgreSQL, three Sigil nodes and an agent; every bind mount, build
// context and Dockerfile it names exists; dependencies name services;
// host ports do not collide; and the Dockerfile's stages, COPY sources
// and PKCS#11 settings are consistent.
func TestDeployComposeAndDockerfileStatic(t *testing.T) {
	dir := filepath.Join("..", "deployments", "compose")
	raw, err := os.ReadFile(filepath.Join(dir, "compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c deployCompose
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("compose.yml: %v", err)
	}
	for _, name := range []string{"postgres", "sigil-1", "sigil-2", "sigil-3", "agent"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("compose.yml has no service %q", name)
		}
	}
	if img := c.Services["postgres"].Image; !strings.HasPrefix(img, "postgres:") {
		t.Errorf("postgres service image %q", img)
	}
	hostPorts := map[string]string{}
	for name, s := range c.Services {
		if s.Build != nil {
			ctx := filepath.Join(dir, s.Build.Context)
			if _, err := os.Stat(filepath.Join(ctx, "go.mod")); err != nil {
				t.Errorf("%s: build context %s is not the repository root: %v", name, s.Build.Context, err)
			}
			if _, err := os.Stat(filepath.Join(ctx, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: dockerfile: %v", name, err)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
					t.Errorf("%s: bind mount source %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s: named volume %q is not declared", name, src)
			}
		}
		var deps []string
		switch d := s.DependsOn.(type) {
		case []any:
			for _, x := range d {
				deps = append(deps, x.(string))
			}
		case map[string]any:
			for k := range d {
				deps = append(deps, k)
			}
		}
		for _, d := range deps {
			if _, ok := c.Services[d]; !ok {
				t.Errorf("%s depends on unknown service %q", name, d)
			}
		}
		for _, p := range s.Ports {
			host, _, _ := strings.Cut(p, ":")
			if other, dup := hostPorts[host]; dup {
				t.Errorf("host port %s used by %s and %s", host, other, name)
			}
			hostPorts[host] = name
		}
		if strings.HasPrefix(name, "sigil-") {
			cmd := strings.Join(s.Command, " ")
			if !strings.Contains(cmd, "server --config /etc/sigil/sigil.yaml") || !strings.Contains(cmd, "--storage postgres://") || !strings.Contains(cmd, "@postgres:5432/") {
				t.Errorf("%s command %q: want a server on the postgres service", name, cmd)
			}
			if !slices.Contains(s.Volumes, "./config/sigil.yaml:/etc/sigil/sigil.yaml:ro") {
				t.Errorf("%s does not mount config/sigil.yaml", name)
			}
		}
	}
	if cmd := c.Services["agent"].Command; len(cmd) == 0 || cmd[0] != "agent" {
		t.Errorf("agent service command %q", cmd)
	}

	df, err := os.ReadFile(filepath.Join("..", "deployments", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	stages := map[string]bool{}
	var froms int
	for _, line := range strings.Split(string(df), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms++
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				stages[f[3]] = true
			}
		case "COPY":
			args := f[1:]
			from := ""
			for len(args) > 0 && strings.HasPrefix(args[0], "--") {
				if v, ok := strings.CutPrefix(args[0], "--from="); ok {
					from = v
				}
				args = args[1:]
			}
			if from != "" {
				if !stages[from] {
					t.Errorf("Dockerfile: COPY --from=%s names no earlier stage", from)
				}
				continue
			}
			for _, src := range args[:len(args)-1] {
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("Dockerfile: COPY source %s: %v", src, err)
				}
			}
		}
	}
	if froms < 2 || !stages["build"] || !stages["runtime"] {
		t.Errorf("Dockerfile: want a multi-stage build (build, runtime), got %d FROM and stages %v", froms, stages)
	}
	for _, want := range []string{"ARG PKCS11_PACKAGE=", "ENV SIGIL_PKCS11_MODULE=", "CGO_ENABLED=1", "USER 10001"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// deployRewriteConfig rewrites a shipped configuration's paths and
// listen addresses into dir, keeping everything else (public_url
// included) as shipped, and returns the new file and the addresses.
func deployRewriteConfig(t *testing.T, src, dir, cert, key string) (path, httpsAddr, grpcAddr string) {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	httpsAddr, grpcAddr = freeAddr(t), freeAddr(t)
	set := map[string]string{"data_dir": filepath.Join(dir, "data"), "https_addr": httpsAddr, "grpc_addr": grpcAddr, "http_addr": freeAddr(t),
		"tls.cert_file": cert, "tls.key_file": key}
	var walk func(n *yaml.Node, prefix string)
	found := map[string]bool{}
	walk = func(n *yaml.Node, prefix string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := prefix+n.Content[i].Value, n.Content[i+1]
			if v.Kind == yaml.MappingNode {
				walk(v, k+".")
			} else if nv, ok := set[k]; ok {
				v.Value, found[k] = nv, true
			}
		}
	}
	walk(doc.Content[0], "")
	for k := range set {
		if !found[k] {
			t.Fatalf("%s has no %s to rewrite", src, k)
		}
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, httpsAddr, grpcAddr
}

// TestDeployShippedConfigsIssue boots the configuration files the
// deployments ship (systemd's example on embedded storage, the compose
// nodes' on a throwaway PostgreSQL) with only their paths and addresses
// rewritten in the file, and issues a certificate from each; the
// certificate's CRL and OCSP URLs are the file's public_url.
func TestDeployShippedConfigsIssue(t *testing.T) {
	needOpenSSL(t)
	tests := []struct {
		name, file string
		postgres   bool
	}{
		{"systemd example", filepath.Join("..", "deployments", "systemd", "sigil.example.yaml"), false},
		{"compose node", filepath.Join("..", "deployments", "compose", "config", "sigil.yaml"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var shipped struct {
				PublicURL string `yaml:"public_url"`
			}
			raw, err := os.ReadFile(tc.file)
			if err != nil || yaml.Unmarshal(raw, &shipped) != nil || shipped.PublicURL == "" {
				t.Fatalf("%s: no public_url: %v", tc.file, err)
			}
			dir := t.TempDir()
			listenerCA, cert, key := listenerTLS(t, dir)
			cfg, httpsAddr, grpcAddr := deployRewriteConfig(t, tc.file, dir, cert, key)
			args := []string{"server", "--config", cfg}
			if tc.postgres {
				args = append(args, "--storage", testharness.StartPostgres(t))
			}
			d := &devServer{dataDir: filepath.Join(dir, "data"), caPath: listenerCA, httpsAddr: httpsAddr, grpcAddr: grpcAddr,
				exports: map[string]string{"SIGIL_ADDR": grpcAddr, "SIGIL_CACERT": listenerCA}, stderr: &syncBuffer{}, child: newChild(exec.Command(sigilBin, args...))}
			d.cmd.Stderr = d.stderr
			if err := d.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go d.reap()
			t.Cleanup(func() { d.stop(t) })
			d.waitPath(t, "/healthz")
			out, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
			var initResp struct {
				RootToken string `json:"root_token"`
			}
			if code != 0 || json.Unmarshal([]byte(out), &initResp) != nil {
				t.Fatalf("operator init: %s", stderr)
			}
			d.exports["SIGIL_TOKEN"] = initResp.RootToken
			deployMust(t, d, "ca", "init")
			keyPath, csrPath := filepath.Join(dir, "leaf.key"), filepath.Join(dir, "leaf.csr")
			run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
				"-keyout", keyPath, "-subj", "/CN=app.example.org", "-addext", "subjectAltName=DNS:app.example.org", "-out", csrPath)
			leaf := leafFrom(t, deployMust(t, d, "ca", "sign", "--csr", csrPath, "--profile", "server"))
			urls := append(append([]string{}, leaf.CRLDistributionPoints...), leaf.OCSPServer...)
			if len(urls) == 0 {
				t.Fatal("the certificate names no CRL or OCSP URL")
			}
			for _, u := range urls {
				if !strings.HasPrefix(u, strings.TrimRight(shipped.PublicURL, "/")+"/") {
					t.Errorf("certificate URL %q is not under the shipped public_url %s", u, shipped.PublicURL)
				}
			}
		})
	}
}
