package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DevOptions start a throwaway `sigil server --dev`.
type DevOptions struct {
	Bin   string // the sigil binary
	Dir   string // data directory (created if missing)
	Pprof bool   // serve pprof on a free loopback port
	// ExtraArgs are appended to the server's command line (--hsm URI, …).
	ExtraArgs []string
	// Log receives the server's stderr (its log); nil discards it.
	Log io.Writer
}

// DevServer is a running dev server.
type DevServer struct {
	Conn      SigilConn
	PID       int
	PprofAddr string    // host:port when DevOptions.Pprof
	HTTPSAddr string    // host:port of the HTTPS listener (/readyz, /metrics)
	Started   time.Time // just before the process was started
	cmd       *exec.Cmd
	done      chan error
	stopOnce  sync.Once
	stopErr   error
}

// freePort returns a loopback address nobody listens on right now.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	return addr, nil
}

// StartDev starts the server on free loopback ports and waits until it
// prints its SIGIL_* lines (it is then serving).
func StartDev(ctx context.Context, o DevOptions) (*DevServer, error) {
	bin, err := filepath.Abs(o.Bin)
	if err != nil {
		return nil, fmt.Errorf("sigil binary: %w", err)
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("sigil binary (build it with `make build`): %w", err)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	addrs := make([]string, 3)
	for i := range addrs {
		if addrs[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	args := []string{"server", "--dev", "--data", o.Dir,
		"--https-addr", addrs[0], "--grpc-addr", addrs[1], "--http-addr", addrs[2]}
	s := &DevServer{done: make(chan error, 1), HTTPSAddr: addrs[0]}
	if o.Pprof {
		if s.PprofAddr, err = freePort(); err != nil {
			return nil, err
		}
		args = append(args, "--pprof", s.PprofAddr)
	}
	args = append(args, o.ExtraArgs...)
	// Not CommandContext: Stop ends the server with SIGTERM and waits, so
	// it can shut down cleanly even when ctx is already cancelled (Ctrl-C).
	cmd := exec.Command(bin, args...)
	cmd.Stderr = o.Log
	if o.Log == nil {
		cmd.Stderr = io.Discard
	}
	// Its own process group: Ctrl-C reaches the harness, which then prints
	// its report and stops the server itself. Pdeathsig ends the server if
	// the harness dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start sigil: %w", err)
	}
	s.Started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sigil: %w", err)
	}
	s.cmd, s.PID = cmd, cmd.Process.Pid
	lines := make(chan string)
	ready := make(chan struct{}) // closed once nobody reads lines any more
	var readyOnce sync.Once
	stopReading := func() { readyOnce.Do(func() { close(ready) }) }
	defer stopReading()
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ready: // keep draining stdout
			}
		}
		close(lines)
		s.done <- cmd.Wait()
	}()
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	for s.Conn.Addr == "" || s.Conn.Token == "" || s.Conn.CACert == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil, errors.New("sigil server exited before it was ready (see its log)")
			}
			// The dev server prints shell lines: export SIGIL_X=value.
			l = strings.TrimPrefix(l, "export ")
			if v, ok := strings.CutPrefix(l, "SIGIL_ADDR="); ok {
				s.Conn.Addr = v
			} else if v, ok := strings.CutPrefix(l, "SIGIL_TOKEN="); ok {
				s.Conn.Token = v
			} else if v, ok := strings.CutPrefix(l, "SIGIL_CACERT="); ok {
				s.Conn.CACert = v
			}
		case <-timeout.C:
			stopReading()
			_ = s.Stop()
			return nil, errors.New("sigil server did not print SIGIL_ADDR within 60s")
		case <-ctx.Done():
			stopReading()
			_ = s.Stop()
			return nil, ctx.Err()
		}
	}
	return s, nil
}

// Stop ends the server (SIGTERM, then SIGKILL after 15 s) and waits. It
// may be called more than once.
func (s *DevServer) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			s.stopErr = errors.New("sigil server did not stop within 15s: killed")
		}
	})
	return s.stopErr
}
