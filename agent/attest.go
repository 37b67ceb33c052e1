package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/sigil-ca/sigil/registration"
)

// peerCred is the kernel's account of the process at the other end of a
// unix socket (SO_PEERCRED), taken when it connected.
type peerCred struct {
	credentials.CommonAuthInfo
	pid      int32
	uid, gid uint32
	// pidfd refers to the connecting process itself (SO_PEERPIDFD, Linux
	// 6.5+), -1 when the kernel has none: with it, attestation can tell
	// that pid still names that process and not a later one reusing it.
	pidfd int
}

// pidfdConn closes the peer's pidfd with the connection.
type pidfdConn struct {
	net.Conn
	pidfd int
}

func (c pidfdConn) Close() error {
	unix.Close(c.pidfd)
	return c.Conn.Close()
}

func (peerCred) AuthType() string { return "unix-peercred" }

// peerCredentials are transport credentials for the Workload API socket:
// no encryption (the socket is local), but every connection carries its
// peer's credentials from the kernel, never from the client.
type peerCredentials struct{}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("agent: peer credentials are server-side only")
}

func (peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("agent: workload connection is %T, not a unix socket", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("agent: peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, nil, fmt.Errorf("agent: peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("agent: SO_PEERCRED: %w", credErr)
	}
	pidfd := -1
	_ = raw.Control(func(fd uintptr) {
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = p
		}
	})
	pc := peerCred{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, pid: cred.Pid, uid: cred.Uid, gid: cred.Gid, pidfd: pidfd}
	if pidfd >= 0 {
		return pidfdConn{Conn: conn, pidfd: pidfd}, pc, nil
	}
	return conn, pc, nil
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (p peerCredentials) Clone() credentials.TransportCredentials { return p }
func (peerCredentials) OverrideServerName(string) error           { return nil }

// process is an attested caller: what the kernel says about it.
type process struct {
	pidfd    int
	pid      int32
	uid, gid uint32
	groups   []string
	exe      string
	procRoot string
	hash     string // computed on first need
	hashErr  error
}

// attest reads the caller's credentials from the connection and its binary
// path from /proc.
func attest(ctx context.Context, procRoot string) (*process, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no peer")
	}
	pc, ok := p.AuthInfo.(peerCred)
	if !ok {
		return nil, errors.New("no peer credentials on the connection")
	}
	proc := &process{pid: pc.pid, pidfd: pc.pidfd, uid: pc.uid, gid: pc.gid, procRoot: procRoot}
	dir := fmt.Sprintf("%s/%d", procRoot, pc.pid)
	exe, err := os.Readlink(dir + "/exe")
	if err != nil {
		return nil, fmt.Errorf("read %s/exe: %w", dir, err)
	}
	proc.exe = exe
	if err := proc.same(); err != nil {
		return nil, err
	}
	if st, err := os.ReadFile(dir + "/status"); err == nil {
		for line := range strings.Lines(string(st)) {
			if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
				proc.groups = strings.Fields(rest)
			}
		}
	}
	return proc, nil
}

// sha256 hashes the binary the process runs, read through /proc/PID/exe so
// it is the file the process executed even if the path was replaced since.
func (p *process) sha256() (string, error) {
	if p.hash != "" || p.hashErr != nil {
		return p.hash, p.hashErr
	}
	f, err := os.Open(fmt.Sprintf("%s/%d/exe", p.procRoot, p.pid))
	if err != nil {
		p.hashErr = fmt.Errorf("open binary of pid %d: %w", p.pid, err)
		return "", p.hashErr
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		p.hashErr = fmt.Errorf("hash binary of pid %d: %w", p.pid, err)
		return "", p.hashErr
	}
	if err := p.same(); err != nil {
		p.hashErr = err
		return "", err
	}
	p.hash = hex.EncodeToString(h.Sum(nil))
	return p.hash, nil
}

// same checks, after /proc was read, that the pid still names the process
// that connected: if it exited and the pid was reused, what /proc said was
// about another process. Without a pidfd (older kernels) it cannot tell.
func (p *process) same() error {
	if p.pidfd < 0 {
		return nil
	}
	if err := unix.PidfdSendSignal(p.pidfd, 0, nil, 0); err != nil {
		return fmt.Errorf("pid %d: the connecting process is gone (%w); its pid may name another process now", p.pid, err)
	}
	return nil
}

// matches reports whether the process matches every selector of e.
func (p *process) matches(e *registration.Entry) bool {
	for _, s := range e.Selectors {
		kind, value, err := registration.ParseSelector(s)
		if err != nil {
			return false
		}
		ok := false
		switch kind {
		case "uid":
			ok = value == strconv.FormatUint(uint64(p.uid), 10)
		case "gid":
			ok = value == strconv.FormatUint(uint64(p.gid), 10) || slices.Contains(p.groups, value)
		case "path":
			ok = value == p.exe
		case "sha256":
			h, err := p.sha256()
			ok = err == nil && h == value
		}
		if !ok {
			return false
		}
	}
	return true
}
