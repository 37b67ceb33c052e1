package render

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrDiskBacked is a destination on a filesystem that is not memory-only,
// without allow_disk.
var ErrDiskBacked = errors.New("destination is on a disk-backed filesystem")

// reloadTimeout bounds a reload command.
const reloadTimeout = time.Minute

// fileTarget is a resolved templates: item.
type fileTarget struct {
	path     string
	mode     os.FileMode
	uid, gid int
	reload   *Reload
	remove   bool
	// inDefault: the destination is under the default directory, which the
	// agent creates.
	inDefault bool
}

func resolveFile(t *Template, defaultDir string) (*fileTarget, error) {
	ft := &fileTarget{mode: os.FileMode(t.Mode), reload: t.Reload, remove: t.RemoveOnExit}
	if ft.mode == 0 {
		ft.mode = 0o400
	}
	var err error
	if ft.uid, err = lookupID(t.UID, false); err != nil {
		return nil, err
	}
	if ft.gid, err = lookupID(t.GID, true); err != nil {
		return nil, err
	}
	if filepath.IsAbs(t.Destination) {
		ft.path = filepath.Clean(t.Destination)
	} else {
		ft.path = filepath.Join(defaultDir, t.Destination)
		ft.inDefault = true
	}
	return ft, nil
}

// prepare makes sure the destination's directory exists and is memory
// backed (or allow_disk is set).
func (f *fileTarget) prepare(defaultDir string, allowDisk bool) error {
	dir := filepath.Dir(f.path)
	if f.inDefault {
		// 0711: workloads of other users reach their own files by name
		// without listing the others.
		if err := os.MkdirAll(defaultDir, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", defaultDir, err)
		}
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	// A directory others can write to would let them swap the file for
	// their own or move it away.
	if _, _, _, err := safePath(dir, true); err != nil {
		return fmt.Errorf("destination directory: %w", err)
	}
	if allowDisk {
		return nil
	}
	mem, fsType, err := memoryBacked(dir)
	if err != nil {
		return err
	}
	if !mem {
		return fmt.Errorf("%w: %s is on %s, not tmpfs or ramfs; use a memory filesystem (e.g. $XDG_RUNTIME_DIR, /run, /dev/shm) or set allow_disk: true",
			ErrDiskBacked, dir, fsType)
	}
	return nil
}

// write replaces the file atomically: a temporary file in the same
// directory gets the mode, owner and data, then is renamed over the
// destination, so a reader sees the old file or the new one, never a part,
// and never a new file with the wrong owner.
func (f *fileTarget) write(data []byte) error {
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, ".sigil-"+filepath.Base(f.path)+"-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if err := tmp.Chmod(f.mode); err != nil {
		return err
	}
	if f.uid >= 0 || f.gid >= 0 {
		if err := tmp.Chown(f.uid, f.gid); err != nil {
			return fmt.Errorf("set owner %d:%d: %w", f.uid, f.gid, err)
		}
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(name, f.path); err != nil {
		return err
	}
	ok = true
	return nil
}

// same reports whether the destination already holds exactly data with
// the configured mode, so a restart of the agent does not reload the
// workload for nothing.
func (f *fileTarget) same(data []byte) bool {
	fi, err := os.Lstat(f.path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != f.mode || fi.Size() != int64(len(data)) {
		return false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if (f.uid >= 0 && int(st.Uid) != f.uid) || (f.gid >= 0 && int(st.Gid) != f.gid) {
			return false
		}
	}
	b, err := os.ReadFile(f.path)
	return err == nil && bytes.Equal(b, data)
}

// runReload delivers the reload action: the signal to the pid in the
// pidfile, or the command.
func runReload(ctx context.Context, r *Reload, env []string, log *slog.Logger) error {
	if r == nil {
		return nil
	}
	if len(r.Command) > 0 {
		ctx, cancel := context.WithTimeout(ctx, reloadTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, r.Command[0], r.Command[1:]...)
		cmd.Env = env
		var out limitedBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			// The output is the command's, not a secret of ours, but it
			// is bounded and only its size is logged.
			return fmt.Errorf("reload command %s: %w (%d bytes of output)", r.Command[0], err, out.b.Len())
		}
		return nil
	}
	sig, err := ParseSignal(r.Signal)
	if err != nil {
		return err
	}
	pid, err := readPidfile(r.Pidfile)
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("signal %s to pid %d (from %s): %w", r.Signal, pid, r.Pidfile, err)
	}
	log.Info("reload signal sent", "signal", r.Signal, "pid", pid)
	return nil
}

// readPidfile reads a pid; 0, 1 and negative numbers (process groups,
// init) are refused.
func readPidfile(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("pidfile: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return 0, fmt.Errorf("pidfile %s: %w", path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pidfile %s: does not hold a process id above 1", path)
	}
	return pid, nil
}

// childEnv is the environment given to commands the agent runs: its own
// minus the credentials it authenticates with, so a workload gets the
// secrets rendered for it, not the power to fetch others.
func childEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "SIGIL_TOKEN", "SIGIL_JOIN_TOKEN", "SIGIL_CLIENT_KEY", "SIGIL_CLIENT_CERT":
			continue
		}
		out = append(out, kv)
	}
	return out
}
