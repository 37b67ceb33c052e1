package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/peer"

	"github.com/sigil-ca/sigil/registration"
)

func TestRenewAt(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, life := range []time.Duration{time.Minute, time.Hour, 24 * time.Hour} {
		for range 20 {
			got := renewAt(start, start.Add(life)).Sub(start)
			if got > life/2 || got < life/2-life/10 {
				t.Fatalf("lifetime %v: renews after %v, want within [%v, %v]", life, got, life/2-life/10, life/2)
			}
		}
	}
	if got := renewAt(start, start.Add(-time.Second)); !got.Equal(start) {
		t.Errorf("an expired certificate renews at %v, want at once", got)
	}
}

func TestCheckSocketDir(t *testing.T) {
	tests := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o755, true},
		{0o700, true},
		{0o777, false},
		{0o1777, false}, // sticky /tmp-like: still refused
		{0o773, false},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "run")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, tt.mode); err != nil {
			t.Fatal(err)
		}
		if err := checkSocketDir(filepath.Join(dir, "agent.sock")); (err == nil) != tt.ok {
			t.Errorf("mode %v: %v, want ok=%v", tt.mode, err, tt.ok)
		}
	}
}

// selfProcess attests this test process through a real unix socket.
func selfProcess(t *testing.T) *process {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	_, info, err := peerCredentials{}.ServerHandshake(sc)
	if err != nil {
		t.Fatal(err)
	}
	pc := info.(peerCred)
	if pc.pidfd < 0 {
		t.Errorf("no pidfd from SO_PEERPIDFD on this kernel")
	}
	if int(pc.pid) != os.Getpid() || int(pc.uid) != os.Getuid() || int(pc.gid) != os.Getgid() {
		t.Fatalf("SO_PEERCRED says %+v, this process is pid %d uid %d gid %d", pc, os.Getpid(), os.Getuid(), os.Getgid())
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: pc})
	p, err := attest(ctx, "/proc")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAttestAndMatch(t *testing.T) {
	p := selfProcess(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	hash := hex.EncodeToString(sum[:])
	uid, gid := strconv.Itoa(os.Getuid()), strconv.Itoa(os.Getgid())
	other := strconv.Itoa(os.Getuid() + 1)
	tests := []struct {
		name      string
		selectors []string
		want      bool
	}{
		{"uid", []string{"unix:uid:" + uid}, true},
		{"other uid", []string{"unix:uid:" + other}, false},
		{"uid and gid", []string{"unix:uid:" + uid, "unix:gid:" + gid}, true},
		{"uid and path", []string{"unix:uid:" + uid, "unix:path:" + exe}, true},
		{"uid and another path", []string{"unix:uid:" + uid, "unix:path:/usr/bin/true"}, false},
		{"sha256", []string{"unix:sha256:" + hash}, true},
		{"changed binary", []string{"unix:uid:" + uid, "unix:sha256:" + hex.EncodeToString(make([]byte, 32))}, false},
		{"all must match", []string{"unix:uid:" + other, "unix:sha256:" + hash}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.matches(&registration.Entry{Selectors: tt.selectors}); got != tt.want {
				t.Fatalf("matches(%v) = %v, want %v (process %+v)", tt.selectors, got, tt.want, p)
			}
		})
	}
}

// TestHelperConnect is not a test: TestAttestGoneProcess runs it in a child
// process that connects to the socket and exits.
func TestHelperConnect(t *testing.T) {
	sock := os.Getenv("SIGIL_AGENT_TEST_CONNECT")
	if sock == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{1})
	os.Exit(0) // leave the connection for the parent to attest
}

// TestAttestGoneProcess: once the connecting process has exited, its pid
// no longer vouches for anything, and attestation refuses.
func TestAttestGoneProcess(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperConnect$")
	cmd.Env = append(os.Environ(), "SIGIL_AGENT_TEST_CONNECT="+sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn, info, err := peerCredentials{}.ServerHandshake(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pc := info.(peerCred)
	p := &process{pid: pc.pid, pidfd: pc.pidfd, procRoot: "/proc"}
	if err := p.same(); err != nil {
		t.Fatalf("while the child runs: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := p.same(); err == nil {
		t.Fatal("attestation accepted a process that has exited")
	}
	if _, err := attest(peer.NewContext(context.Background(), &peer.Peer{AuthInfo: pc}), "/proc"); err == nil {
		t.Fatal("attest accepted a process that has exited")
	}
}
