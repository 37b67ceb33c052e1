// Package pgcluster starts and stops a throwaway PostgreSQL server from the
// Debian server packages: initdb into a temporary directory (as the
// postgres user when running as root), start on a free loopback port with
// durability off, stop immediately and remove the directory at the end. It
// does not import package testing, so both the test harness
// (internal/testharness) and the benchmark command (bench) use it.
package pgcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrMissing is returned when the PostgreSQL server binaries are absent.
var ErrMissing = errors.New("PostgreSQL server binaries not found under /usr/lib/postgresql: run scripts/deps.sh (as root: apt-get install -y postgresql)")

// Options adjust a cluster.
type Options struct {
	// Prefix names the temporary directory ("sigil-pg-" if empty).
	Prefix string
	// Settings are extra server settings, "name=value", passed with -c.
	Settings []string
}

// Cluster is one running throwaway PostgreSQL server. Its superuser is
// "postgres" with a random password.
type Cluster struct {
	bin      string // directory of initdb, pg_ctl
	dir      string // everything lives here; removed by Stop
	data     string
	logPath  string
	port     int
	password string
	asRoot   bool // run server binaries through runuser -u postgres
	// startOpts are the server options pg_ctl start was given, for
	// StartServer after StopServer (ha.go).
	startOpts string
}

// DSN is the superuser's connection URL for database db.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", c.password, c.port, db)
}

// Port is the loopback TCP port the server listens on.
func (c *Cluster) Port() int { return c.port }

// LogPath is the server log file.
func (c *Cluster) LogPath() string { return c.logPath }

// Bin returns the bin directory of the highest installed major version of
// the Debian PostgreSQL packages, or ErrMissing.
func Bin() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	type cand struct {
		ver int
		bin string
	}
	var cs []cand
	for _, m := range matches {
		bin := filepath.Dir(m)
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(bin)))
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(bin, "pg_ctl")); err != nil {
			continue
		}
		cs = append(cs, cand{v, bin})
	}
	if len(cs) == 0 {
		return "", ErrMissing
	}
	slices.SortFunc(cs, func(a, b cand) int { return b.ver - a.ver })
	return cs[0].bin, nil
}

// command runs a server binary, as the postgres user when we are root
// (initdb and postgres refuse to run as root).
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, name)
	var cmd *exec.Cmd
	if c.asRoot {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = c.dir
	// No inherited stdout: go test would wait for every holder of its pipe.
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	cmd := c.command(ctx, name, args...)
	if err := cmd.Run(); err != nil {
		// The password is passed in a file, so the output never holds it.
		return fmt.Errorf("%s: %w\n%s", name, err, strings.TrimSpace(cmd.Stdout.(*bytes.Buffer).String()))
	}
	return nil
}

// Start initialises and starts a cluster. Durability is off (fsync,
// synchronous_commit, full_page_writes): the data is thrown away. A
// detached watchdog stops the server and removes its directory once this
// process is gone, however it ends; Stop does it at once.
func Start(ctx context.Context, o Options) (_ *Cluster, err error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin, asRoot: os.Geteuid() == 0}
	if o.Prefix == "" {
		o.Prefix = "sigil-pg-"
	}
	// The server user must reach the directory: TMPDIR may sit under a
	// private home directory, so fall back to /tmp when it is not
	// traversable by others.
	base := os.TempDir()
	if c.asRoot && !traversable(base) {
		base = "/tmp"
	}
	if c.dir, err = os.MkdirTemp(base, o.Prefix); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	// MkdirTemp makes a 0700 directory.
	if err := os.Chmod(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	c.data = filepath.Join(c.dir, "data")
	c.logPath = filepath.Join(c.dir, "postgres.log")
	c.password = rand.Text()
	pwFile := filepath.Join(c.dir, "pw")
	if err := os.WriteFile(pwFile, []byte(c.password), 0o600); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if c.asRoot {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("postgres: running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, p := range []string{c.dir, pwFile} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, fmt.Errorf("postgres: %w", err)
			}
		}
	}

	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = c.run(ictx, "initdb", "-D", c.data, "-U", "postgres", "--pwfile="+pwFile,
		"--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--no-locale", "--no-sync")
	_ = os.Remove(pwFile)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}

	// The free port is found by binding and releasing it, so another
	// process may take it before the server binds: retry with a new one.
	for attempt := 1; ; attempt++ {
		if c.port, err = freePort(); err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		opts := []string{"-p", strconv.Itoa(c.port), "-k", c.dir,
			"-c", "listen_addresses=127.0.0.1",
			// Throwaway data: durability buys nothing and costs time.
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "max_connections=300"}
		for _, s := range o.Settings {
			opts = append(opts, "-c", s)
		}
		c.startOpts = strings.Join(opts, " ")
		err = c.run(ictx, "pg_ctl", "-D", c.data, "-l", c.logPath, "-w", "-t", "60", "-o", c.startOpts, "start")
		if err == nil {
			break
		}
		if attempt == 3 {
			return nil, fmt.Errorf("postgres: start failed (log %s):\n%w\n--- log tail ---\n%s", c.logPath, err, c.LogTail(30))
		}
	}
	c.startWatchdog()
	return c, nil
}

// startWatchdog starts a detached shell that waits for this process to exit
// and then stops the server and removes its directory: pg_ctl daemonises
// the server, so nothing else would if we die (kill -9, a test -timeout
// panic). It has its own session so a Ctrl-C to our process group does not
// kill it first.
func (c *Cluster) startWatchdog() {
	stop := c.command(context.Background(), "pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")
	script := `pid=$1; dir=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@" >/dev/null 2>&1
rm -rf "$dir"`
	args := append([]string{"-c", script, "sigil-pg-watchdog", strconv.Itoa(os.Getpid()), c.dir}, stop.Args...)
	w := exec.Command("/bin/sh", args...)
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		return // best effort: Stop still stops the cluster
	}
	_ = w.Process.Release()
}

// Stop stops the server at once (the data is thrown away) and removes its
// directory.
func (c *Cluster) Stop() {
	if _, err := os.Stat(filepath.Join(c.data, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = c.run(ctx, "pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")
		cancel()
	}
	_ = os.RemoveAll(c.dir)
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// traversable reports whether every directory from / to dir can be searched
// by other users (the postgres user must reach the data directory).
func traversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}
