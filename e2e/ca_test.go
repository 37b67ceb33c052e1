package e2e

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// run executes a command and fails the test with its output on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl not found: run scripts/deps.sh (as root: apt-get install -y openssl)")
	}
}

func leafFrom(t *testing.T, pemData string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(pemData))
	if b == nil {
		t.Fatalf("no PEM certificate in %q", pemData)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestOpenSSLInterop signs an OpenSSL CSR, verifies the result with
// `openssl verify`, revokes it, and checks the CRL at its CDP and OCSP with
// OpenSSL's own tools.
func TestOpenSSLInterop(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	key, csr := filepath.Join(dir, "leaf.key"), filepath.Join(dir, "leaf.csr")
	run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", key, "-subj", "/CN=app.example.test", "-addext", "subjectAltName=DNS:app.example.test,DNS:api.example.test", "-out", csr)

	out, stderr, code := d.cli(t, "ca", "sign", "--csr", csr, "--profile", "server", "--ttl", "24h")
	if code != 0 {
		t.Fatalf("ca sign: %s", stderr)
	}
	leafPath, chainPath := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "chain.pem")
	first := strings.Index(out, "-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")
	if err := os.WriteFile(leafPath, []byte(out[:first]), 0o644); err != nil {
		t.Fatal(err)
	}
	chain, _, code := d.cli(t, "ca", "chain")
	if code != 0 {
		t.Fatal("ca chain failed")
	}
	if err := os.WriteFile(chainPath, []byte(chain), 0o644); err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(d.dataDir, "ca.pem")
	if got := run(t, "openssl", "verify", "-CAfile", caPath, "-untrusted", chainPath, leafPath); !strings.Contains(got, ": OK") {
		t.Fatalf("openssl verify: %s", got)
	}
	leaf := leafFrom(t, out)
	if leaf.NotAfter.Sub(leaf.NotBefore) > 24*time.Hour+2*time.Minute {
		t.Errorf("lifetime %v exceeds the requested 24h", leaf.NotAfter.Sub(leaf.NotBefore))
	}
	serial := leaf.SerialNumber.Text(16)

	// OCSP says good before revocation.
	issuerPath := filepath.Join(dir, "issuer.pem")
	intermediate := chain[:strings.Index(chain, "-----END CERTIFICATE-----")+len("-----END CERTIFICATE-----\n")]
	if err := os.WriteFile(issuerPath, []byte(intermediate), 0o644); err != nil {
		t.Fatal(err)
	}
	if len(leaf.OCSPServer) != 1 || len(leaf.CRLDistributionPoints) != 1 {
		t.Fatalf("AIA OCSP %v, CDP %v", leaf.OCSPServer, leaf.CRLDistributionPoints)
	}
	ocsp := func() string {
		return run(t, "openssl", "ocsp", "-issuer", issuerPath, "-cert", leafPath, "-url", leaf.OCSPServer[0],
			"-CAfile", caPath, "-verify_other", chainPath)
	}
	if got := ocsp(); !strings.Contains(got, leafPath+": good") || !strings.Contains(got, "Response verify OK") {
		t.Fatalf("openssl ocsp before revocation: %s", got)
	}

	if _, stderr, code := d.cli(t, "ca", "revoke", "--reason", "keyCompromise", serial); code != 0 {
		t.Fatalf("revoke: %s", stderr)
	}
	if got := ocsp(); !strings.Contains(got, leafPath+": revoked") {
		t.Fatalf("openssl ocsp after revocation: %s", got)
	}

	// The CRL at the certificate's CDP lists it with its reason.
	resp, err := http.Get(leaf.CRLDistributionPoints[0])
	if err != nil {
		t.Fatal(err)
	}
	crlPath := filepath.Join(dir, "leaf.crl")
	f, _ := os.Create(crlPath)
	if _, err := f.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	f.Close()
	resp.Body.Close()
	crlText := run(t, "openssl", "crl", "-inform", "DER", "-in", crlPath, "-text", "-noout")
	if !strings.Contains(strings.ToLower(strings.ReplaceAll(crlText, ":", "")), strings.ToLower(serial)) || !strings.Contains(crlText, "Key Compromise") {
		t.Fatalf("CRL does not list %s with Key Compromise:\n%s", serial, crlText)
	}
	if !strings.Contains(crlText, "Issuing Distribution Point") {
		t.Errorf("CRL has no Issuing Distribution Point:\n%s", crlText)
	}

	// Listing finds it as revoked.
	list, _, code := d.cli(t, "ca", "list", "--revoked", "--format", "json")
	var rows []struct{ Serial, Status string }
	if code != 0 || json.Unmarshal([]byte(list), &rows) != nil || len(rows) != 1 || rows[0].Serial != serial || rows[0].Status != "revoked" {
		t.Fatalf("ca list --revoked = %s", list)
	}

	// Workload SVID issued with a locally generated key.
	svidKey, svidCert := filepath.Join(dir, "svid.key"), filepath.Join(dir, "svid.pem")
	if _, stderr, code := d.cli(t, "ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/default/sa/web", "--key-out", svidKey, "--cert-out", svidCert); code != 0 {
		t.Fatalf("ca issue: %s", stderr)
	}
	if st, _ := os.Stat(svidKey); st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", st.Mode().Perm())
	}
	if got := run(t, "openssl", "verify", "-CAfile", caPath, "-untrusted", chainPath, svidCert); !strings.Contains(got, ": OK") {
		t.Fatalf("openssl verify SVID: %s", got)
	}
	if _, stderr, code := d.cli(t, "ca", "issue", "--spiffe-id", "spiffe://other.test/x", "--key-out", svidKey+"2", "--cert-out", svidCert+"2"); code != 1 || !strings.Contains(stderr, "other.test") {
		t.Errorf("SVID outside the trust domain: code %d %s", code, stderr)
	}
	if _, err := os.Stat(svidKey + "2"); err == nil {
		t.Error("a refused issuance left a key file behind")
	}
}

// TestRotationAndRewrap rotates the intermediate and the barrier key, and
// checks both survive a restart.
func TestRotationAndRewrap(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dataDir)
	out, stderr, code := d.cli(t, "ca", "issuers", "--format", "json")
	var before []struct {
		ID     string
		Kind   string
		Active bool
	}
	if code != 0 || json.Unmarshal([]byte(out), &before) != nil || len(before) != 2 {
		t.Fatalf("issuers: %s %s", out, stderr)
	}
	if _, stderr, code := d.cli(t, "ca", "intermediate", "rotate"); code != 0 {
		t.Fatalf("rotate intermediate: %s", stderr)
	}
	out, _, _ = d.cli(t, "ca", "issuers", "--format", "json")
	var after []struct {
		ID     string
		Kind   string
		Active bool
	}
	if err := json.Unmarshal([]byte(out), &after); err != nil || len(after) != 3 {
		t.Fatalf("issuers after rotation: %s", out)
	}
	active := 0
	for _, is := range after {
		if is.Kind == "intermediate" && is.Active {
			active++
			if is.ID == before[1].ID {
				t.Error("the old intermediate is still the active one")
			}
		}
	}
	if active != 1 {
		t.Errorf("%d active intermediates, want 1", active)
	}

	out, stderr, code = d.cli(t, "operator", "rotate", "--format", "json")
	if code != 0 || !strings.Contains(out, `"key_version": 2`) {
		t.Fatalf("operator rotate: %s %s", out, stderr)
	}
	out, stderr, code = d.cli(t, "operator", "rewrap", "--format", "json")
	var rw struct {
		Rewrapped      int `json:"rewrapped"`
		AlreadyCurrent int `json:"already_current"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rw) != nil || rw.Rewrapped < 4 {
		t.Fatalf("operator rewrap: %s %s", out, stderr)
	}
	out, _, _ = d.cli(t, "operator", "rewrap", "--format", "json")
	if json.Unmarshal([]byte(out), &rw) != nil || rw.Rewrapped != 0 || rw.AlreadyCurrent < 4 {
		t.Fatalf("second rewrap should find everything current: %s", out)
	}
	d.stop(t)

	// Everything still opens after a restart: keys, token, new intermediate.
	d2 := startDev(t, dataDir)
	csrDir := t.TempDir()
	run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(csrDir, "k"), "-subj", "/CN=x.example.test", "-addext", "subjectAltName=DNS:x.example.test", "-out", filepath.Join(csrDir, "csr"))
	if _, stderr, code := d2.cli(t, "ca", "sign", "--csr", filepath.Join(csrDir, "csr")); code != 0 {
		t.Fatalf("sign after rotation and restart: %s", stderr)
	}
}
