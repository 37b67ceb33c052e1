package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestDevServerLifecycle(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dataDir)

	if got, want := d.exports["SIGIL_ADDR"], d.grpcAddr; got != want {
		t.Errorf("SIGIL_ADDR = %q, want %q", got, want)
	}
	tokenFile, err := os.ReadFile(filepath.Join(dataDir, "root-token"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(tokenFile)) != d.exports["SIGIL_TOKEN"] {
		t.Error("root-token file differs from the printed SIGIL_TOKEN")
	}
	if st, _ := os.Stat(filepath.Join(dataDir, "root-token")); st.Mode().Perm() != 0o600 {
		t.Errorf("root-token mode = %v, want 0600", st.Mode().Perm())
	}
	rootPEM, err := os.ReadFile(filepath.Join(dataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}

	// gRPC health over TLS verified against ca.pem, no token needed.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health = %v, %v", hr, err)
	}
	conn.Close()

	// Everything else needs the token.
	_, stderr, code := d.cli(t, "ca", "root", "--token", "")
	if code != 1 || !strings.Contains(stderr, "missing credentials") {
		t.Errorf("ca root without token: code %d, stderr %q", code, stderr)
	}
	_, stderr, code = d.cli(t, "ca", "root", "--token", "sgt_wrong")
	if code != 1 || !strings.Contains(stderr, "invalid or expired token") {
		t.Errorf("ca root with a wrong token: code %d, stderr %q", code, stderr)
	}

	out, stderr, code := d.cli(t, "status", "--format", "json")
	if code != 0 {
		t.Fatalf("status: code %d: %s", code, stderr)
	}
	var st struct {
		Version, Storage, Custody, CASubject string
		Sealed, Initialized                  bool
		CANotAfter                           time.Time `json:"ca_not_after"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	if st.Sealed || !st.Initialized || st.Storage != "sqlite" || st.Custody != "software" || !st.CANotAfter.After(time.Now()) {
		t.Errorf("status = %+v", st)
	}

	out, _, code = d.cli(t, "ca", "root")
	if code != 0 || out != string(rootPEM) {
		t.Errorf("ca root (code %d) differs from ca.pem", code)
	}

	// A second server on the same directory is refused while the first runs.
	second := exec.Command(sigilBin, "server", "--dev", "--data", dataDir, "--https-addr", freeAddr(t), "--grpc-addr", freeAddr(t), "--http-addr", freeAddr(t))
	var secondErr bytes.Buffer
	second.Stderr = &secondErr
	if err := second.Run(); err == nil {
		t.Fatal("second server on the same data directory started")
	}
	if !strings.Contains(secondErr.String(), "in use by another sigil server") {
		t.Errorf("second server error = %q", secondErr.String())
	}

	// Restart on the same directory: same root, same token.
	d.stop(t)
	d2 := startDev(t, dataDir)
	if d2.exports["SIGIL_TOKEN"] != d.exports["SIGIL_TOKEN"] {
		t.Error("root token changed across restart")
	}
	rootPEM2, err := os.ReadFile(filepath.Join(dataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rootPEM, rootPEM2) {
		t.Error("root certificate changed across restart")
	}
	if _, stderr, code := d2.cli(t, "status"); code != 0 {
		t.Errorf("status after restart: %d %s", code, stderr)
	}
	d2.stop(t)

	// No private key is stored in clear anywhere in the data directory.
	err = filepath.WalkDir(dataDir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("%s contains a PEM private key", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{args: []string{"bogus"}, code: 2, want: `unknown command "bogus"`},
		{args: []string{"status", "--format", "yaml"}, code: 2, want: "--format must be text or json"},
		{args: []string{"server", "--nope"}, code: 2, want: "unknown flag --nope"},
		{args: []string{"ca", "revoke"}, code: 2, want: "missing argument"},
		{args: []string{"version"}, code: 0, want: ""},
		{args: []string{"--help"}, code: 0, want: ""},
		{args: []string{"status", "--addr", "127.0.0.1:1", "--cacert", "/nonexistent"}, code: 1, want: "read --cacert"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(sigilBin, tt.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tt.code || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("code %d stderr %q; want code %d containing %q", code, stderr.String(), tt.code, tt.want)
			}
		})
	}
}

func TestServerConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "sigil.yaml")
	if err := os.WriteFile(cfgPath, []byte("dev: true\nlisten_addr: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sigilBin, "server", "--config", cfgPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), `unknown key "listen_addr"`) {
		t.Fatalf("err %v, stderr %q", err, stderr.String())
	}

	// Flags override the file.
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(cfgPath, []byte("dev: true\ndata_dir: "+data+"\nhttps_addr: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, data, "--config", cfgPath)
	if _, _, code := d.cli(t, "status"); code != 0 {
		t.Fatal("status failed on a server configured from a file")
	}
}
