package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listenerTLS writes a CA and a localhost certificate for the listeners of a
// production server, which starts sealed and so cannot issue its own.
func listenerTLS(t *testing.T, dir string) (caPath, certPath, keyPath string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "listener test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	caPath, certPath, keyPath = filepath.Join(dir, "listener-ca.pem"), filepath.Join(dir, "listener.pem"), filepath.Join(dir, "listener.key")
	for path, block := range map[string]*pem.Block{caPath: {Type: "CERTIFICATE", Bytes: caDER}, certPath: {Type: "CERTIFICATE", Bytes: der}, keyPath: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caPath, certPath, keyPath
}

type statusJSON struct {
	Initialized    bool   `json:"initialized"`
	Sealed         bool   `json:"sealed"`
	UnsealProgress string `json:"unseal_progress"`
}

func TestShamirSealLifecycle(t *testing.T) {
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	dataDir := filepath.Join(dir, "data")
	prod := func() *devServer {
		return startServer(t, dataDir, false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	}
	d := prod()
	status := func(d *devServer) statusJSON {
		t.Helper()
		out, stderr, code := d.cli(t, "status", "--format", "json")
		// status exits 2 when sealed, like vault status.
		if code != 0 && code != 2 {
			t.Fatalf("status: %s", stderr)
		}
		var st statusJSON
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		if (code == 2) != st.Sealed {
			t.Fatalf("status exit %d with sealed %v", code, st.Sealed)
		}
		return st
	}
	if st := status(d); st.Initialized || !st.Sealed {
		t.Fatalf("fresh server status = %+v", st)
	}
	out, stderr, code := d.cli(t, "operator", "init", "--shares", "5", "--threshold", "3", "--format", "json")
	if code != 0 {
		t.Fatalf("operator init: %s", stderr)
	}
	var initResp struct {
		Shares    []string `json:"shares"`
		RootToken string   `json:"root_token"`
	}
	if err := json.Unmarshal([]byte(out), &initResp); err != nil || len(initResp.Shares) != 5 || initResp.RootToken == "" {
		t.Fatalf("init output %q: %v", out, err)
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	if _, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1"); code != 1 || !strings.Contains(stderr, "already initialised") {
		t.Errorf("second init: code %d %s", code, stderr)
	}
	if _, stderr, code := d.cli(t, "ca", "init", "--common-name", "Seal Test CA"); code != 0 {
		t.Fatalf("ca init: %s", stderr)
	}
	rootPEM, stderr, code := d.cli(t, "ca", "root")
	if code != 0 {
		t.Fatalf("ca root: %s", stderr)
	}
	d.stop(t)

	// Restart: sealed; requests fail "sealed".
	d = prod()
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	if st := status(d); !st.Initialized || !st.Sealed || st.UnsealProgress != "0/3" {
		t.Fatalf("restarted status = %+v", st)
	}
	if _, stderr, code := d.cli(t, "ca", "root"); code != 1 || !strings.Contains(stderr, "sealed") {
		t.Fatalf("ca root while sealed: code %d %s", code, stderr)
	}
	for i, share := range initResp.Shares[:2] {
		if _, stderr, code := d.cli(t, "operator", "unseal", share); code != 0 {
			t.Fatalf("unseal share %d: %s", i+1, stderr)
		}
	}
	if st := status(d); !st.Sealed || st.UnsealProgress != "2/3" {
		t.Fatalf("after two shares: %+v", st)
	}
	// A wrong share is rejected without consuming the two given.
	wrong := "sgs1_" + strings.Repeat("A", 44)
	if _, stderr, code := d.cli(t, "operator", "unseal", wrong); code != 1 || !strings.Contains(stderr, "does not belong") {
		t.Fatalf("wrong share: code %d %s", code, stderr)
	}
	if _, stderr, code := d.cli(t, "operator", "unseal", initResp.Shares[0]); code != 1 || !strings.Contains(stderr, "already given") {
		t.Fatalf("repeated share: code %d %s", code, stderr)
	}
	if st := status(d); st.UnsealProgress != "2/3" {
		t.Fatalf("after rejected shares: %+v", st)
	}
	// The third share from the prompt (stdin).
	if _, stderr, code := d.cliStdin(t, initResp.Shares[4]+"\n", "operator", "unseal"); code != 0 {
		t.Fatalf("unseal third share: %s", stderr)
	}
	if st := status(d); st.Sealed {
		t.Fatalf("still sealed after three shares: %+v", st)
	}
	got, stderr, code := d.cli(t, "ca", "root")
	if code != 0 || got != rootPEM {
		t.Fatalf("the same CA does not answer after unseal (code %d): %s", code, stderr)
	}
	// Seal again on request.
	if _, stderr, code := d.cli(t, "operator", "seal"); code != 0 {
		t.Fatalf("seal: %s", stderr)
	}
	if _, _, code := d.cli(t, "ca", "root"); code != 1 {
		t.Fatal("ca root answered after seal")
	}
}
