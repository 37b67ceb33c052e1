package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ux2Run runs the binary without a server's environment and returns its
// output and exit code.
func ux2Run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Env = append(os.Environ(), "SIGIL_TOKEN=", "SIGIL_ADDR=", "SIGIL_CACERT=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run sigil %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}

// TestUx2ShippedConfigsBootAndIssue boots every shipped configuration file
// in production mode (its paths and listen addresses adapted by flags, its
// public_url as shipped), initialises it and issues a certificate. The
// systemd example once set an https public_url: the server started and
// every issuance then failed lint.
func TestUx2ShippedConfigsBootAndIssue(t *testing.T) {
	needOpenSSL(t)
	configs, err := filepath.Glob(filepath.Join("..", "deployments", "*", "*.yaml"))
	if err != nil || len(configs) == 0 {
		t.Fatalf("no shipped configs found: %v", err)
	}
	for _, cfgPath := range configs {
		t.Run(filepath.Base(cfgPath), func(t *testing.T) {
			dir := t.TempDir()
			listenerCA, cert, key := listenerTLS(t, dir)
			d := startServer(t, filepath.Join(dir, "data"), false, listenerCA,
				"--config", cfgPath, "--tls-cert", cert, "--tls-key", key)
			out, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
			var initResp struct {
				RootToken string `json:"root_token"`
			}
			if code != 0 || json.Unmarshal([]byte(out), &initResp) != nil {
				t.Fatalf("operator init: %s", stderr)
			}
			d.exports["SIGIL_TOKEN"] = initResp.RootToken
			if _, stderr, code := d.cli(t, "ca", "init"); code != 0 {
				t.Fatalf("ca init: %s", stderr)
			}
			keyPath, csrPath := filepath.Join(dir, "leaf.key"), filepath.Join(dir, "leaf.csr")
			run(t, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
				"-keyout", keyPath, "-subj", "/CN=app.example.org", "-addext", "subjectAltName=DNS:app.example.org", "-out", csrPath)
			out, stderr, code = d.cli(t, "ca", "sign", "--csr", csrPath, "--profile", "server")
			if code != 0 {
				t.Fatalf("ca sign with %s: %s", cfgPath, stderr)
			}
			leaf := leafFrom(t, out)
			for _, u := range append(append([]string{}, leaf.CRLDistributionPoints...), leaf.OCSPServer...) {
				if !strings.HasPrefix(u, "http://") {
					t.Errorf("certificate URL %q is not http", u)
				}
			}
			// Server certificates keep a requested CN that is one of their SANs.
			if leaf.Subject.CommonName != "app.example.org" {
				t.Errorf("subject %q: the requested CN was dropped", leaf.Subject)
			}
		})
	}
}

// TestUx2ConfigErrorsNameTheirFlags replays the review's start-up mistakes:
// each error names the key and its flag, an https public_url is refused at
// start instead of failing every issuance, and a bad TLS file is reported
// once ("tls: tls:" no more) before the data directory is touched.
func TestUx2ConfigErrorsNameTheirFlags(t *testing.T) {
	dir := t.TempDir()
	_, cert, key := listenerTLS(t, dir)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	httpsYAML := filepath.Join(dir, "https.yaml")
	if err := os.WriteFile(httpsYAML, []byte("public_url: https://ca.example.org:8443\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"cert without key", []string{"--tls-cert", cert}, 2, []string{"--tls-cert", "--tls-key", "set together"}},
		{"https public url flag", []string{"--public-url", "https://ca.example.org:8443", "--tls-cert", cert, "--tls-key", key}, 2,
			[]string{"--public-url", "must be an http:// URL", "http://ca.example.org:"}},
		{"https public url in file", []string{"--config", httpsYAML, "--tls-cert", cert, "--tls-key", key}, 2,
			[]string{"public_url (--public-url)", "must be an http:// URL"}},
		{"garbage certificate", []string{"--tls-cert", garbage, "--tls-key", key}, 1, []string{"tls.cert_file (--tls-cert) " + garbage, "--tls-key"}},
		{"bad log level", []string{"--log-level", "verbose"}, 2, []string{"log.level (--log-level)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			args := append([]string{"server", "--data", data, "--https-addr", freeAddr(t), "--grpc-addr", freeAddr(t), "--http-addr", freeAddr(t)}, tc.args...)
			_, stderr, code := ux2Run(t, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "tls: tls:") {
				t.Errorf("doubled prefix:\n%s", stderr)
			}
			// Nothing was written to storage before the mistake was found.
			if _, err := os.Stat(filepath.Join(data, "sigil.db")); err == nil {
				t.Errorf("the data directory was migrated before the configuration error was reported")
			}
		})
	}
}

// TestUx2GuardRails: `ca init --external-root` on an initialised CA is
// refused like `ca init` (it used to print a CSR and leave a dangling key
// in custody).
func TestUx2GuardRails(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	keysBefore, _, _ := d.cli(t, "ca", "issuers", "--format", "json")
	out, stderr, code := d.cli(t, "ca", "init", "--external-root", "--common-name", "Second")
	if code != 1 || strings.Contains(out, "CERTIFICATE REQUEST") || !strings.Contains(stderr, "already initialized") || !strings.Contains(stderr, "ca intermediate rotate") {
		t.Fatalf("ca init --external-root on an initialised CA: exit %d\nstdout %s\nstderr %s", code, out, stderr)
	}
	if _, stderr, code := d.cli(t, "ca", "init"); code != 1 || !strings.Contains(stderr, "already initialized") {
		t.Fatalf("ca init on an initialised CA: exit %d %s", code, stderr)
	}
	if keysAfter, _, _ := d.cli(t, "ca", "issuers", "--format", "json"); keysAfter != keysBefore {
		t.Errorf("issuers changed:\n%s\n→\n%s", keysBefore, keysAfter)
	}
	// The next rotation is still Intermediate 2: no key index was used up.
	out, stderr, code = d.cli(t, "ca", "intermediate", "rotate", "--format", "json")
	if code != 0 {
		t.Fatalf("rotate: %s", stderr)
	}
	if !strings.Contains(out, "Intermediate 2") {
		t.Errorf("rotation after the refused CSR: %s", out)
	}
}
