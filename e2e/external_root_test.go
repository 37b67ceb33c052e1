package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExternalRoot initialises a production server whose intermediate is
// signed by a root kept outside Sigil (made here with OpenSSL).
func TestExternalRoot(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	d := startServer(t, filepath.Join(dir, "data"), false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	out, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
	var initResp struct {
		RootToken string `json:"root_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &initResp) != nil {
		t.Fatalf("operator init: %s", stderr)
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken

	csrPEM, stderr, code := d.cli(t, "ca", "init", "--external-root", "--common-name", "Sigil External Intermediate")
	if code != 0 || !strings.Contains(csrPEM, "BEGIN CERTIFICATE REQUEST") {
		t.Fatalf("ca init --external-root: %s %s", csrPEM, stderr)
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	if err := os.WriteFile(p("int.csr"), []byte(csrPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p("root.key"),
		"-out", p("root.pem"), "-days", "30", "-subj", "/CN=Offline Root",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	ext := "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n" +
		"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nextendedKeyUsage=serverAuth,clientAuth\n"
	if err := os.WriteFile(p("int.ext"), []byte(ext), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "openssl", "x509", "-req", "-in", p("int.csr"), "-CA", p("root.pem"), "-CAkey", p("root.key"), "-CAcreateserial",
		"-days", "20", "-extfile", p("int.ext"), "-out", p("int.pem"))
	intPEM, _ := os.ReadFile(p("int.pem"))
	rootPEM, _ := os.ReadFile(p("root.pem"))

	// A chain whose intermediate is not for Sigil's key is refused.
	run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p("other.key"),
		"-subj", "/CN=Not Sigil", "-out", p("other.csr"))
	run(t, "openssl", "x509", "-req", "-in", p("other.csr"), "-CA", p("root.pem"), "-CAkey", p("root.key"), "-CAcreateserial",
		"-days", "20", "-extfile", p("int.ext"), "-out", p("other.pem"))
	otherPEM, _ := os.ReadFile(p("other.pem"))
	if err := os.WriteFile(p("bad-chain.pem"), append(otherPEM, rootPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "ca", "intermediate", "import", p("bad-chain.pem")); code != 1 || stderr == "" {
		t.Fatalf("import of a foreign intermediate: code %d %s", code, stderr)
	}

	if err := os.WriteFile(p("chain.pem"), append(intPEM, rootPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "ca", "intermediate", "import", p("chain.pem")); code != 0 {
		t.Fatalf("ca intermediate import: %s", stderr)
	}
	run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p("leaf.key"),
		"-subj", "/CN=svc.example.test", "-addext", "subjectAltName=DNS:svc.example.test", "-out", p("leaf.csr"))
	leaf, stderr, code := d.cli(t, "ca", "sign", "--csr", p("leaf.csr"))
	if code != 0 {
		t.Fatalf("sign under the imported intermediate: %s", stderr)
	}
	if err := os.WriteFile(p("leaf.pem"), []byte(leaf), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := run(t, "openssl", "verify", "-CAfile", p("root.pem"), "-untrusted", p("int.pem"), p("leaf.pem")); !strings.Contains(got, ": OK") {
		t.Fatalf("openssl verify against the external root: %s", got)
	}
}
