package render

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// stopGrace is how long a command has to exit after SIGTERM (on restart
// or shutdown) before it is killed.
const stopGrace = 10 * time.Second

// forwarded are the signals passed on to the command.
var forwarded = []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGALRM, syscall.SIGCONT}

// supervisor runs the exec command: it starts it, forwards signals to it,
// restarts or signals it when its environment changes, and reports its
// exit.
type supervisor struct {
	cfg  *Exec
	log  *slog.Logger
	sigs chan os.Signal
	cmd  *exec.Cmd
	done chan int
	// lastForward is when a signal was last passed on.
	lastForward time.Time
}

func newSupervisor(cfg *Exec, log *slog.Logger) *supervisor {
	return &supervisor{cfg: cfg, log: log}
}

// start runs the command with env and begins forwarding signals.
func (s *supervisor) start(env []string) error {
	if s.sigs == nil {
		s.sigs = make(chan os.Signal, 8)
		signal.Notify(s.sigs, forwarded...)
	}
	argv := s.cfg.Command
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.cfg.Stdin, s.cfg.Stdout, s.cfg.Stderr
	if cmd.Stdin == nil {
		cmd.Stdin = os.Stdin
	}
	if cmd.Stdout == nil {
		cmd.Stdout = os.Stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec: start %s: %w", argv[0], err)
	}
	done := make(chan int, 1)
	go func() {
		err := cmd.Wait()
		done <- exitCode(cmd, err)
	}()
	s.cmd, s.done = cmd, done
	s.log.Info("command started", "command", argv[0], "pid", cmd.Process.Pid)
	return nil
}

// exitCode is the command's status, 128+N for signal N as shells report.
func exitCode(cmd *exec.Cmd, err error) int {
	st := cmd.ProcessState
	if st == nil {
		return 127
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) || err == nil {
		return st.ExitCode()
	}
	return 1
}

// exited delivers the running command's status; nil (never) without one.
func (s *supervisor) exited() <-chan int {
	if s == nil {
		return nil
	}
	return s.done
}

// signals delivers signals to forward; nil without a command.
func (s *supervisor) signals() <-chan os.Signal {
	if s == nil {
		return nil
	}
	return s.sigs
}

func (s *supervisor) running() bool { return s != nil && s.cmd != nil }

func (s *supervisor) forward(sig os.Signal) {
	if s.cmd == nil {
		return
	}
	s.lastForward = time.Now()
	if err := s.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.log.Warn("forward signal", "signal", sig, "error", err)
	}
}

// changed applies an environment change: a restart with env, or the
// configured signal.
func (s *supervisor) changed(env []string) {
	if !s.cfg.restartOnChange() {
		if s.cfg.Signal == "" {
			return
		}
		sig, _ := ParseSignal(s.cfg.Signal)
		s.log.Info("signalling the command", "signal", s.cfg.Signal)
		s.forward(sig)
		return
	}
	s.log.Info("restarting the command with the new environment")
	code := s.stop()
	s.log.Info("command stopped for restart", "status", code)
	if err := s.start(env); err != nil {
		// Its exit is reported as the command's end.
		s.log.Error("restart failed", "error", err)
		done := make(chan int, 1)
		done <- 127
		s.cmd, s.done = nil, done
	}
}

// stop sends SIGTERM, waits stopGrace, then kills; it returns the status.
func (s *supervisor) stop() int {
	if s.cmd == nil {
		return <-s.done
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	return s.wait()
}

func (s *supervisor) wait() int {
	select {
	case code := <-s.done:
		s.cmd = nil
		return code
	case <-time.After(stopGrace):
		s.log.Warn("command did not exit within the grace period; killing it", "grace", stopGrace)
		_ = s.cmd.Process.Kill()
		code := <-s.done
		s.cmd = nil
		return code
	}
}

// shutdown ends the command when Run's context ends. A signal that ended
// the context (SIGINT, SIGTERM) is already queued for forwarding: it is
// passed on instead of a second SIGTERM.
func (s *supervisor) shutdown() int {
	if s.cmd == nil {
		return <-s.done
	}
	forwardedOne := false
drain:
	for {
		select {
		case sig := <-s.sigs:
			s.forward(sig)
			forwardedOne = true
		default:
			break drain
		}
	}
	if !forwardedOne && time.Since(s.lastForward) > time.Second {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	}
	return s.wait()
}

func (s *supervisor) stopForwarding() {
	if s != nil && s.sigs != nil {
		signal.Stop(s.sigs)
	}
}
