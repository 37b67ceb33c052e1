package e2e

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// ux3WritePEM writes one PEM block to dir/name and returns the path.
func ux3WritePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ux3Keys writes the bad recipient key files a user could plausibly pass:
// an all-zero (low-order) X25519 key, a P-256 key, a private key, and a
// file that is not PEM at all.
func ux3Keys(t *testing.T, dir string) map[string]string {
	t.Helper()
	zero, err := ecdh.X25519().NewPublicKey(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	zeroDER, err := x509.MarshalPKIXPublicKey(zero)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(x)
	if err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "notpem.pub")
	if err := os.WriteFile(notPEM, []byte("ssh-ed25519 AAAA not a pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"zero":    ux3WritePEM(t, dir, "zero.pub", "PUBLIC KEY", zeroDER),
		"p256":    ux3WritePEM(t, dir, "p256.pub", "PUBLIC KEY", ecDER),
		"private": ux3WritePEM(t, dir, "x.key", "PRIVATE KEY", privDER),
		"notpem":  notPEM,
	}
}

// TestUx3BadRecipientKeysGiveTheReason replays each bad recipient key
// through the built binary (operator init's share recipients, kv get's
// recipient key) and straight through gRPC (the server's own check, which
// a client other than the CLI reaches): each answer names the recipient
// and what is wrong with it, and none is "internal error". Before the fix
// an all-zero X25519 key passed validation and failed only when sealing,
// after the secret was minted, as "seal secret: internal error".
func TestUx3BadRecipientKeysGiveTheReason(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	keys := ux3Keys(t, dir)
	kvMust(t, d, "engine", "enable", "kv", "--mount", "kv")
	kvMust(t, d, "kv", "put", "kv/app/db", "password=hunter2")
	policyFile := filepath.Join(dir, "reader.yaml")
	if err := os.WriteFile(policyFile, []byte("rules:\n  - path: \"kv/data/app/*\"\n    capabilities: [read]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	kvMust(t, d, "policy", "write", "ux3-reader", policyFile)

	cli := []struct {
		name string
		args []string
		want string
	}{
		{"kv get, all-zero X25519", []string{"kv", "get", "kv/app/db", "--recipient-key", keys["zero"]},
			keys["zero"] + ": X25519 public key (KEM 0x0020): a low-order point (such as all zeros) that no secret can be sealed to"},
		{"kv get, P-256 key", []string{"kv", "get", "kv/app/db", "--recipient-key", keys["p256"]},
			keys["p256"] + ": the public key is ECDSA P-256, not X25519"},
		{"kv get, private key", []string{"kv", "get", "kv/app/db", "--recipient-key", keys["private"]},
			keys["private"] + ": a PRIVATE KEY, not a PUBLIC KEY: give the recipient's public key"},
		{"kv get, not PEM", []string{"kv", "get", "kv/app/db", "--recipient-key", keys["notpem"]},
			keys["notpem"] + ": no PEM block"},
		{"operator init, all-zero share recipient", []string{"operator", "init", "--shares", "1", "--threshold", "1", "--share-recipients", keys["zero"]},
			"--share-recipients " + keys["zero"] + ": X25519 public key (KEM 0x0020): a low-order point"},
	}
	for _, tc := range cli {
		t.Run("CLI/"+tc.name, func(t *testing.T) {
			out, stderr, code := d.cli(t, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "internal error") {
				t.Errorf("exit %d, stdout %q, stderr %q; want a failure saying %q", code, out, stderr, tc.want)
			}
			if strings.Contains(out, "hunter2") {
				t.Errorf("the secret was printed: %q", out)
			}
		})
	}

	conn, ctx := d.grpcConn(t)
	zeroX := &sigilv1.Recipient{Kem: 0x0020, PublicKey: make([]byte, 32)}
	p256 := make([]byte, 65)
	p256[0] = 4
	grpcCases := []struct {
		name string
		call func(r *sigilv1.Recipient) error
		r    *sigilv1.Recipient
		want string
	}{
		{"kv get, all-zero X25519", ux3KVGet(ctx, conn), zeroX,
			"recipient: X25519 public key (KEM 0x0020): a low-order point (such as all zeros) that no secret can be sealed to"},
		{"token create, all-zero X25519", ux3TokenCreate(ctx, conn), zeroX,
			"recipient: X25519 public key (KEM 0x0020): a low-order point (such as all zeros) that no secret can be sealed to"},
		{"kv get, wrong length", ux3KVGet(ctx, conn), &sigilv1.Recipient{Kem: 0x0020, PublicKey: make([]byte, 31)},
			"recipient: X25519 public key (KEM 0x0020): is 31 bytes, want 32"},
		{"kv get, P-256 point as X25519", ux3KVGet(ctx, conn), &sigilv1.Recipient{Kem: 0x0020, PublicKey: p256},
			"recipient: X25519 public key (KEM 0x0020): is 65 bytes, want 32 (65 bytes is a P-256 key: send KEM 0x0010)"},
		{"kv get, P-256 point off the curve", ux3KVGet(ctx, conn), &sigilv1.Recipient{Kem: 0x0010, PublicKey: p256},
			"recipient: P-256 public key (KEM 0x0010): not a valid point on the curve"},
	}
	for _, tc := range grpcCases {
		t.Run("gRPC/"+tc.name, func(t *testing.T) {
			err := tc.call(tc.r)
			st := status.Convert(err)
			// The server appends the request id; the reason comes before it.
			msg, _, _ := strings.Cut(st.Message(), " (request id ")
			if st.Code() != codes.InvalidArgument || msg != tc.want {
				t.Errorf("got %v %q, want InvalidArgument %q", st.Code(), st.Message(), tc.want)
			}
		})
	}

	// The dev server's own answer to operator init says what it is and
	// what to do instead.
	_, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1")
	want := "a dev server initialises itself at start and refuses operator init: use the root token it printed at start"
	if code == 0 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "FailedPrecondition") {
		t.Errorf("operator init on a dev server: exit %d, stderr %q, want %q", code, stderr, want)
	}
}

func ux3KVGet(ctx context.Context, conn *grpc.ClientConn) func(*sigilv1.Recipient) error {
	return func(r *sigilv1.Recipient) error {
		_, err := sigilv1.NewKVServiceClient(conn).Get(ctx, &sigilv1.KVGetRequest{Mount: "kv", Path: "app/db", Recipient: r})
		return err
	}
}

func ux3TokenCreate(ctx context.Context, conn *grpc.ClientConn) func(*sigilv1.Recipient) error {
	return func(r *sigilv1.Recipient) error {
		_, err := sigilv1.NewTokenServiceClient(conn).Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"ux3-reader"}, TtlSeconds: 600, Recipient: r})
		return err
	}
}

// TestUx3OperatorInitOnDevDataDir: a production server started on a dev
// server's data directory answers operator init with what is wrong and
// what to do, not "initialise: internal error", and leaves the data alone:
// the dev server starts on it again afterwards.
func TestUx3OperatorInitOnDevDataDir(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	dev := startDev(t, data)
	kvMust(t, dev, "engine", "enable", "kv", "--mount", "kv")
	dev.stop(t)

	listenerCA, cert, key := listenerTLS(t, dir)
	prod := startServer(t, data, false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	env := []string{"SIGIL_ADDR=" + prod.grpcAddr, "SIGIL_CACERT=" + listenerCA}
	_, stderr, code := uxRun(t, env, "operator", "init", "--shares", "1", "--threshold", "1")
	want := "the server's data directory belongs to a dev server (it holds dev-unseal.key) and a dev server initialises itself at start and refuses operator init: " +
		"start the server with --dev on that directory, or give this server a new, empty data directory and run operator init again (request id "
	if code == 0 || !strings.Contains(stderr, want) || strings.Contains(stderr, "internal error") {
		t.Errorf("operator init on a dev data dir: exit %d, stderr %q, want %q", code, stderr, want)
	}
	if log := prod.stderr.String(); !strings.Contains(log, "this data directory belongs to a dev server") {
		t.Errorf("start-up log does not say the data directory is a dev server's:\n%s", log)
	}
	prod.stop(t)

	// The refusal touched nothing: the dev server still opens its data.
	dev = startDev(t, data)
	if out, stderr, code := dev.cli(t, "engine", "list"); code != 0 || !strings.Contains(out, "kv") {
		t.Errorf("dev server after the refused init: exit %d, %q %q", code, out, stderr)
	}
}

// TestUx3ErrorChainsSaidOnce replays common failures through the built
// binary and checks the exact message: each says its context once, with
// no package prefixes ("engines:", "ca:", "certificates:") and no
// storage sentinel contradicting it ("already revoked: already exists").
// A server-side "connection refused" (the engine's database) is not
// mistaken for the CLI failing to reach the server.
func TestUx3ErrorChainsSaidOnce(t *testing.T) {
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	keyOut, certOut := filepath.Join(dir, "w.key"), filepath.Join(dir, "w.pem")
	kvMust(t, d, "ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/a/sa/b", "--key-out", keyOut, "--cert-out", certOut)
	raw, err := os.ReadFile(certOut)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("no PEM in %s", certOut)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	serial := cert.SerialNumber.Text(16)
	kvMust(t, d, "ca", "revoke", serial)
	kvMust(t, d, "engine", "enable", "kv", "--mount", "kv")
	kvMust(t, d, "engine", "enable", "postgres", "--mount", "ux3db")
	closed := freeAddr(t)

	tests := []struct {
		name string
		args []string
		want string // stderr up to the request id, exactly
	}{
		{"revoke twice", []string{"ca", "revoke", serial},
			"error: revoke: certificate " + serial + " is already revoked"},
		{"mount taken", []string{"engine", "enable", "kv", "--mount", "kv"},
			"error: enable engine: path already mounted: kv (overlaps kv)"},
		{"unreachable database", []string{"engine", "configure", "ux3db", "connection_url=postgres://u:secret-pw@" + closed + "/db?sslmode=disable"},
			"error: configure engine: mount ux3db: postgres engine: connect: failed to connect to `user=u database=db`: " + closed + " (127.0.0.1): dial error: dial tcp " + closed + ": connection refused"},
		{"unknown role", []string{"creds", "ux3db/nosuch"},
			"error: mint: role not found: ux3db/nosuch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := d.cli(t, tc.args...)
			got, _, _ := strings.Cut(stderr, " (request id ")
			if code != 1 || got != tc.want {
				t.Errorf("exit %d, message %q, want %q", code, got, tc.want)
			}
			for _, bad := range []string{"engines:", "ca:", "certificates:", "already exists: already", "revoked: already exists", "internal error", "secret-pw"} {
				if strings.Contains(stderr, bad) {
					t.Errorf("message says %q: %s", bad, stderr)
				}
			}
		})
	}
}

// TestUx3InitOutput: operator init and ca init open their text output with
// one summary line of what was created, like the other commands; their
// JSON keeps its shape. The text is checked line by line against the
// server's own state (threshold, the CA's certificates).
func TestUx3InitOutput(t *testing.T) {
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	d := startServer(t, filepath.Join(dir, "data"), false, listenerCA, "--tls-cert", cert, "--tls-key", key)

	out, stderr, code := d.cli(t, "operator", "init", "--shares", "3", "--threshold", "2")
	if code != 0 {
		t.Fatalf("operator init: exit %d %s", code, stderr)
	}
	lines := strings.Split(out, "\n")
	if want := "initialised sigil: 3 unseal shares (2 needed to unseal) and a root token; the server is unsealed now"; lines[0] != want || lines[1] != "" {
		t.Fatalf("operator init first lines %q, want %q and a blank line; output:\n%s", lines[:2], want, out)
	}
	for i := 1; i <= 3; i++ {
		if !strings.HasPrefix(lines[1+i], "Unseal share "+strconv.Itoa(i)+": ") {
			t.Errorf("line %d = %q, want share %d", 2+i, lines[1+i], i)
		}
	}
	token := ""
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, "Initial root token: "); ok {
			token = v
		}
	}
	if token == "" {
		t.Fatalf("no root token in:\n%s", out)
	}
	d.exports["SIGIL_TOKEN"] = token

	out, stderr, code = d.cli(t, "ca", "init", "--common-name", "Ux3 CA")
	if code != 0 {
		t.Fatalf("ca init: exit %d %s", code, stderr)
	}
	summary, chainPEM, ok := strings.Cut(out, "\n\n")
	if !ok {
		t.Fatalf("ca init output has no summary line:\n%s", out)
	}
	chain := pemCerts(t, chainPEM)
	if len(chain) != 2 {
		t.Fatalf("ca init printed %d certificates after the summary, want 2", len(chain))
	}
	desc := func(c *x509.Certificate) string {
		return strconv.Quote(c.Subject.String()) + " (serial " + c.SerialNumber.Text(16) + ", expires " + c.NotAfter.UTC().Format(time.RFC3339) + ")"
	}
	if want := "initialised the CA: root " + desc(chain[1]) + ", intermediate " + desc(chain[0]); summary != want {
		t.Errorf("ca init summary\n %q\nwant %q", summary, want)
	}
	rootPEM, _, _ := d.cli(t, "ca", "root")
	if root := pemCerts(t, rootPEM); len(root) != 1 || !root[0].Equal(chain[1]) {
		t.Errorf("the summary's root is not the server's root")
	}

	// JSON unchanged: operator init's four keys, and ca init's list of
	// certificates, on a second fresh server.
	d2 := startServer(t, filepath.Join(dir, "data2"), false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	out, stderr, code = d2.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
	var initJSON map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &initJSON) != nil {
		t.Fatalf("operator init --format json: exit %d %q %s", code, out, stderr)
	}
	for _, k := range []string{"shares", "threshold", "root_token", "auto_unseal"} {
		if _, ok := initJSON[k]; !ok {
			t.Errorf("operator init JSON lacks %q", k)
		}
	}
	if len(initJSON) != 4 {
		t.Errorf("operator init JSON has %d keys, want 4", len(initJSON))
	}
	d2.exports["SIGIL_TOKEN"] = initJSON["root_token"].(string)
	out, stderr, code = d2.cli(t, "ca", "init", "--format", "json")
	var certsJSON []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &certsJSON) != nil || len(certsJSON) != 2 || certsJSON[0]["pem"] == nil || certsJSON[0]["serial"] == nil {
		t.Errorf("ca init --format json: exit %d %q %s", code, out, stderr)
	}
}
