package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// The harness's throwaway PostgreSQL follows internal/testharness (which
// imports package testing and so cannot be linked into a command): initdb
// into a temporary directory, as the postgres user when running as root,
// start it on a free loopback port, stop it immediately and remove the
// directory at the end.

// Postgres is a running throwaway PostgreSQL server.
type Postgres struct {
	bin, dir, data, logPath string
	port                    int
	password                string
	asRoot                  bool
}

// DSN is the superuser's connection URL for database db.
func (p *Postgres) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", p.password, p.port, db)
}

// Version asks the server for its version string.
func (p *Postgres) Version(ctx context.Context) (string, error) {
	c, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("postgres: %w", err)
	}
	defer c.Close(ctx)
	var v string
	if err := c.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return "", fmt.Errorf("postgres: %w", err)
	}
	return v, nil
}

// PostgresBin returns the bin directory of the highest installed major
// version of the Debian PostgreSQL packages.
func PostgresBin() (string, error) {
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
		return "", errors.New("PostgreSQL server binaries not found under /usr/lib/postgresql (scripts/deps.sh, or apt-get install -y postgresql)")
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].ver > cs[j].ver })
	return cs[0].bin, nil
}

func (p *Postgres) run(ctx context.Context, name string, args ...string) error {
	path := filepath.Join(p.bin, name)
	var cmd *exec.Cmd
	if p.asRoot {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = p.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		// The password is passed in a file, so the output never holds it.
		return fmt.Errorf("%s: %w\n%s", name, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// StartPostgres initialises and starts a throwaway server. Durability is
// off (fsync, synchronous_commit, full_page_writes): the data is thrown
// away, and Sigil and the raw ceiling run against the same settings.
func StartPostgres(ctx context.Context) (_ *Postgres, err error) {
	bin, err := PostgresBin()
	if err != nil {
		return nil, err
	}
	p := &Postgres{bin: bin, asRoot: os.Geteuid() == 0}
	base := os.TempDir()
	if p.asRoot && !traversable(base) {
		base = "/tmp"
	}
	if p.dir, err = os.MkdirTemp(base, "sigil-bench-pg-"); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	defer func() {
		if err != nil {
			p.Stop()
		}
	}()
	if err := os.Chmod(p.dir, 0o755); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	p.data = filepath.Join(p.dir, "data")
	p.logPath = filepath.Join(p.dir, "postgres.log")
	pw := make([]byte, 24)
	_, _ = rand.Read(pw) // crypto/rand.Read never fails
	p.password = hex.EncodeToString(pw)
	pwFile := filepath.Join(p.dir, "pw")
	if err := os.WriteFile(pwFile, []byte(p.password), 0o600); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if p.asRoot {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("postgres: running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, f := range []string{p.dir, pwFile} {
			if err := os.Chown(f, uid, gid); err != nil {
				return nil, fmt.Errorf("postgres: %w", err)
			}
		}
	}
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = p.run(ictx, "initdb", "-D", p.data, "-U", "postgres", "--pwfile="+pwFile,
		"--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
	_ = os.Remove(pwFile)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	for attempt := 1; ; attempt++ {
		addr, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		_, port, _ := strings.Cut(addr, ":")
		p.port, _ = strconv.Atoi(port)
		opts := strings.Join([]string{"-p", port, "-k", p.dir, "-c", "listen_addresses=127.0.0.1",
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "max_connections=300"}, " ")
		err = p.run(ictx, "pg_ctl", "-D", p.data, "-l", p.logPath, "-w", "-t", "60", "-o", opts, "start")
		if err == nil {
			p.watchdog()
			return p, nil
		}
		if attempt == 3 {
			return nil, fmt.Errorf("postgres: start failed (log %s): %w", p.logPath, err)
		}
	}
}

// watchdog starts a detached shell that stops the server and removes its
// directory once this process is gone, however it ends (kill -9 included);
// pg_ctl daemonises the server, so nothing else would.
func (p *Postgres) watchdog() {
	stop := filepath.Join(p.bin, "pg_ctl")
	args := []string{stop, "-D", p.data, "-m", "immediate", "-w", "stop"}
	if p.asRoot {
		args = append([]string{"runuser", "-u", "postgres", "--"}, args...)
	}
	script := `pid=$1; dir=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@" >/dev/null 2>&1
rm -rf "$dir"`
	w := exec.Command("/bin/sh", append([]string{"-c", script, "sigil-bench-pg-watchdog", strconv.Itoa(os.Getpid()), p.dir}, args...)...)
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err == nil {
		_ = w.Process.Release()
	}
}

// Stop stops the server at once (the data is thrown away) and removes its
// directory.
func (p *Postgres) Stop() {
	if _, err := os.Stat(filepath.Join(p.data, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = p.run(ctx, "pg_ctl", "-D", p.data, "-m", "immediate", "-w", "stop")
		cancel()
	}
	_ = os.RemoveAll(p.dir)
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
