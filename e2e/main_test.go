// Package e2e runs whole-system tests: the built sigil binary, started as a
// user would start it, talked to over its real interfaces.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// sigilBin is the binary built once for the whole package.
var sigilBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sigil-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sigilBin = filepath.Join(dir, "sigil")
	build := exec.Command("go", "build", "-o", sigilBin, "github.com/sigil-ca/sigil/cmd/sigil")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sigil:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer is a goroutine-safe buffer for a child's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// child is a started child process and its exit: done receives it once,
// exited is closed before that, for checks that must not consume done
// (reading cmd.ProcessState while Wait sets it is a data race).
type child struct {
	cmd    *exec.Cmd
	done   chan error
	exited chan struct{}
}

func newChild(cmd *exec.Cmd) child {
	return child{cmd: cmd, done: make(chan error, 1), exited: make(chan struct{})}
}

// reap waits for the started process and reports its exit on done and
// exited. A caller reading the process's stdout pipe calls it once the
// pipe is drained; others run it in a goroutine.
func (c *child) reap() {
	err := c.cmd.Wait()
	close(c.exited)
	c.done <- err
}

func (c *child) hasExited() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

// startAgain runs launch, and again (at most three times in all) when the
// process lost a freeAddr port to another process: freeAddr's ports are
// free when chosen, not reserved.
func startAgain[T any](t *testing.T, launch func() (T, error)) T {
	t.Helper()
	for attempt := 1; ; attempt++ {
		v, err := launch()
		if err == nil {
			return v
		}
		if attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			t.Logf("attempt %d lost a port to another process; starting again on new ports", attempt)
			continue
		}
		t.Fatal(err)
	}
}

// devServer is a running `sigil server --dev` child process.
type devServer struct {
	child
	dataDir   string
	caPath    string
	httpsAddr string
	grpcAddr  string
	exports   map[string]string
	stderr    *syncBuffer
}

// startDev starts the binary with --dev on dataDir and waits for its export
// lines and for /readyz to answer over TLS verified against DIR/ca.pem.
func startDev(t *testing.T, dataDir string, extra ...string) *devServer {
	t.Helper()
	return startServer(t, dataDir, true, filepath.Join(dataDir, "ca.pem"), extra...)
}

// startServer starts the binary; a production server (dev false) is only
// waited for until its HTTPS listener answers /healthz, since it starts
// sealed and prints no export lines.
func startServer(t *testing.T, dataDir string, dev bool, caPath string, extra ...string) *devServer {
	t.Helper()
	return startAgain(t, func() (*devServer, error) { return launchServer(t, dataDir, dev, caPath, extra...) })
}

func launchServer(t *testing.T, dataDir string, dev bool, caPath string, extra ...string) (*devServer, error) {
	t.Helper()
	d := &devServer{dataDir: dataDir, caPath: caPath, httpsAddr: freeAddr(t), grpcAddr: freeAddr(t), exports: map[string]string{},
		stderr: &syncBuffer{}}
	args := []string{"server", "--data", dataDir, "--https-addr", d.httpsAddr, "--grpc-addr", d.grpcAddr, "--http-addr", freeAddr(t), "--shutdown-timeout", "5s"}
	if dev {
		args = append(args, "--dev")
	}
	args = append(args, extra...)
	d.child = newChild(exec.Command(sigilBin, args...))
	d.cmd.Stderr = d.stderr
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		d.reap()
	}()
	t.Cleanup(func() { d.stop(t) })
	if !dev {
		go func() {
			for range lines {
			}
		}()
		d.exports = map[string]string{"SIGIL_ADDR": d.grpcAddr, "SIGIL_CACERT": caPath}
		return d, d.awaitPath(t, "/healthz")
	}
	deadline := time.After(60 * time.Second)
	for len(d.exports) < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil, fmt.Errorf("server exited before printing its export lines; stderr:\n%s", d.stderr.String())
			}
			// The dev server prints shell lines: export SIGIL_X=value.
			if k, v, ok := strings.Cut(strings.TrimPrefix(l, "export "), "="); ok && strings.HasPrefix(k, "SIGIL_") {
				d.exports[k] = v
			}
		case <-deadline:
			return nil, fmt.Errorf("server printed no export lines within 60s; stderr:\n%s", d.stderr.String())
		}
	}
	go func() {
		for range lines {
		}
	}()
	return d, d.awaitPath(t, "/readyz")
}

func (d *devServer) httpClient(t *testing.T) *http.Client {
	t.Helper()
	pemBytes, err := os.ReadFile(d.caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("ca.pem holds no certificate")
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (d *devServer) waitPath(t *testing.T, path string) {
	t.Helper()
	if err := d.awaitPath(t, path); err != nil {
		t.Fatal(err)
	}
}

// awaitPath waits for path to answer 200 over TLS; it gives up when the
// process exits or after 20 s.
func (d *devServer) awaitPath(t *testing.T, path string) error {
	t.Helper()
	var last string
	for i := 0; i < 200; i++ {
		if d.hasExited() {
			last = "the server exited"
			break
		}
		if _, err := os.Stat(d.caPath); err != nil {
			last = err.Error()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c := d.httpClient(t)
		resp, err := c.Get("https://" + d.httpsAddr + path)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s never answered 200: %s; stderr:\n%s", path, last, d.stderr.String())
}

// stop sends SIGTERM and waits for a clean exit.
func (d *devServer) stop(t *testing.T) {
	t.Helper()
	if d.cmd.Process == nil || d.hasExited() {
		return
	}
	_ = d.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("server exited with %v; stderr:\n%s", err, d.stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		t.Errorf("server did not stop within 30s of SIGTERM")
	}
}

// cli runs a client command against d with its exported environment.
func (d *devServer) cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return d.cliStdin(t, "", args...)
}

// cliStdin is cli with standard input.
func (d *devServer) cliStdin(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+d.exports["SIGIL_ADDR"], "SIGIL_TOKEN="+d.exports["SIGIL_TOKEN"], "SIGIL_CACERT="+d.exports["SIGIL_CACERT"])
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run sigil %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}
