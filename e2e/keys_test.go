package e2e

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// minted is what `sigil creds MOUNT/ROLE --format json` prints.
type minted struct {
	LeaseID string            `json:"lease_id"`
	Data    map[string]string `json:"data"`
	Public  map[string]string `json:"public"`
}

// mintKeys mints a keys-engine credential of mountRole as root through the
// CLI (its data and public halves as maps).
func mintKeys(t *testing.T, d *devServer, mountRole string) minted {
	t.Helper()
	return cliJSON[minted](t, d, "creds", mountRole, "--format", "json")
}

// cliJSON runs the CLI as root and decodes its JSON output as T, failing
// the test if the command fails or prints something else.
func cliJSON[T any](t *testing.T, d *devServer, args ...string) T {
	t.Helper()
	out, stderr, code := d.cli(t, args...)
	if code != 0 {
		t.Fatalf("%v: code %d: %s", args, code, stderr)
	}
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		// Not the output itself: it may hold a secret.
		t.Fatalf("%v: output (%d bytes) is not the documented JSON: %v", args, len(out), err)
	}
	return v
}

// grpcConn dials the dev server as its root token holder.
func (d *devServer) grpcConn(t *testing.T) (*grpc.ClientConn, context.Context) {
	t.Helper()
	rootPEM, err := os.ReadFile(d.caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return conn, metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+d.exports["SIGIL_TOKEN"])
}

func TestKeysEngine(t *testing.T) {
	d := startDev(t, t.TempDir())
	for _, args := range [][]string{
		{"engine", "enable", "keys", "--mount", "keys"},
		{"role", "write", "keys/ed", "key_type=ed25519", "ttl=1h"},
		{"role", "write", "keys/svc", "key_type=ecdsa-p256", "ttl=1h", "issue_certificate=true", "profile=workload",
			"uri_sans=spiffe://sigil.test/keys/{{role}}"},
	} {
		if _, stderr, code := d.cli(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}

	t.Run("ed25519 opens only with the recipient key", func(t *testing.T) {
		conn, ctx := d.grpcConn(t)
		priv, r, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
		if err != nil {
			t.Fatal(err)
		}
		other, _, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := sigilv1.NewEngineServiceClient(conn).Creds(ctx, &sigilv1.CredsRequest{Mount: "keys", Role: "ed",
			Recipient: &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}})
		if err != nil {
			t.Fatal(err)
		}
		var en envelope.Envelope
		if err := en.UnmarshalBinary(resp.GetEnvelope()); err != nil {
			t.Fatal(err)
		}
		if _, err := envelope.OpenData(other, &en, resp.GetLeaseId()); err == nil {
			t.Fatal("another private key opened the envelope")
		}
		data, err := envelope.OpenData(priv, &en, resp.GetLeaseId())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(resp.GetEnvelope()), "PRIVATE KEY") {
			t.Fatal("private key visible in the envelope")
		}
		block, _ := pem.Decode([]byte(data["private_key"]))
		if block == nil || block.Type != "PRIVATE KEY" {
			t.Fatalf("private_key is not PKCS#8 PEM: %q", data["private_key"][:min(40, len(data["private_key"]))])
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		// The public half travels in clear and matches.
		pblock, _ := pem.Decode([]byte(resp.GetPublicData()["public_key"]))
		if pblock == nil {
			t.Fatalf("no public key in clear: %v", resp.GetPublicData())
		}
		pub, err := x509.ParsePKIXPublicKey(pblock.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !k.(ed25519.PrivateKey).Public().(ed25519.PublicKey).Equal(pub) {
			t.Fatal("clear public key does not match the minted private key")
		}
	})

	t.Run("certificate revoked with the lease", func(t *testing.T) {
		c := mintKeys(t, d, "keys/svc")
		chainPEM := c.Public["certificate"]
		leaf := leafFrom(t, chainPEM)
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://sigil.test/keys/svc" {
			t.Fatalf("certificate URIs %v", leaf.URIs)
		}
		block, _ := pem.Decode([]byte(c.Data["private_key"]))
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
			t.Fatal("certificate is not for the minted key")
		}

		dir := t.TempDir()
		leafPath, issuerPath := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "issuer.pem")
		blocks := strings.SplitAfter(chainPEM, "-----END CERTIFICATE-----\n")
		if err := os.WriteFile(leafPath, []byte(blocks[0]), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(issuerPath, []byte(blocks[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		ocsp := func() string {
			return run(t, "openssl", "ocsp", "-issuer", issuerPath, "-cert", leafPath, "-url", leaf.OCSPServer[0],
				"-CAfile", d.caPath, "-verify_other", issuerPath)
		}
		if got := ocsp(); !strings.Contains(got, leafPath+": good") {
			t.Fatalf("OCSP before revocation: %s", got)
		}
		if _, stderr, code := d.cli(t, "lease", "revoke", c.LeaseID); code != 0 {
			t.Fatal(stderr)
		}
		if got := ocsp(); !strings.Contains(got, leafPath+": revoked") {
			t.Fatalf("OCSP after the lease was revoked: %s", got)
		}
	})

	t.Run("bad roles", func(t *testing.T) {
		for _, args := range [][]string{
			{"role", "write", "keys/x", "key_type=dsa"},
			{"role", "write", "keys/x", "key_type=aes-256", "issue_certificate=true"},
			{"role", "write", "keys/x", "type=ssh_user"}, // no allowed_principals
		} {
			if _, stderr, code := d.cli(t, args...); code == 0 || !strings.Contains(stderr, "invalid") {
				t.Errorf("%v: code %d, %q", args, code, stderr)
			}
		}
	})
}
