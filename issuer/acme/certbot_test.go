package acme

import (
	"context"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/sigil-ca/sigil/issuer/validation"
)

// TestCertbot runs the Debian certbot against the server: register, order
// two names with http-01 (standalone), verify the chain with openssl,
// renew, and revoke, seeing the revocation in OCSP. certbot 2.1 has no ARI
// support, so its renewal is a plain re-order (lego covers replaces).
func TestCertbot(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	certbot, err := exec.LookPath("certbot")
	if err != nil {
		t.Fatal("certbot not found: run scripts/deps.sh (as root: apt-get install -y certbot)")
	}
	port := freePort(t)
	// The challenge answers on loopback: allowed explicitly, as dev mode does.
	va, err := validation.New(validation.Config{HTTP01Port: port, Timeout: 10 * time.Second, AllowLoopback: true,
		LookupIP: func(context.Context, string) ([]net.IP, error) { return []net.IP{net.IPv4(127, 0, 0, 1)}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, va, nil)
	dir := t.TempDir()
	bundle := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		base := []string{"--config-dir", filepath.Join(dir, "c"), "--work-dir", filepath.Join(dir, "w"),
			"--logs-dir", filepath.Join(dir, "l"), "--server", e.base + "/directory", "-n"}
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, certbot, append(args, base...)...)
		cmd.Env = append(os.Environ(), "REQUESTS_CA_BUNDLE="+bundle)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("certbot %v: %v\n%s", args[0], err, out)
		}
		t.Logf("certbot %s took %v", args[0], time.Since(start))
	}
	obtain := []string{"certonly", "--standalone", "--http-01-port", strconv.Itoa(port), "--http-01-address", "127.0.0.1",
		"-d", "a.example.test", "-d", "b.example.test", "--agree-tos", "--register-unsafely-without-email",
		"--key-type", "ecdsa", "--cert-name", "sigil"}
	run(obtain...)
	live := filepath.Join(dir, "c", "live", "sigil")
	full, err := os.ReadFile(filepath.Join(live, "fullchain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	opensslVerify(t, e, full)
	first := parsePEMCerts(t, full)

	run(append(obtain, "--force-renewal")...)
	full2, err := os.ReadFile(filepath.Join(live, "fullchain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	second := parsePEMCerts(t, full2)
	if second[0].SerialNumber.Cmp(first[0].SerialNumber) == 0 {
		t.Fatal("renewal kept the same certificate")
	}

	run("revoke", "--cert-path", filepath.Join(live, "cert.pem"), "--reason", "superseded", "--no-delete-after-revoke")
	if st := e.ocspStatus(t, second[0], second[1]); st != ocsp.Revoked {
		t.Fatalf("OCSP status %d after certbot revoke", st)
	}
	if st := e.ocspStatus(t, first[0], first[1]); st != ocsp.Good {
		t.Fatalf("OCSP status %d for the unrevoked certificate", st)
	}
}
