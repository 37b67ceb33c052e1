// Package testharness starts real components for tests: PostgreSQL, SoftHSM2
// tokens and Sigil itself.
package testharness

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// pgMissing is the failure message when the server binaries are absent:
// PostgreSQL tests fail rather than skip, so a missing dependency is never
// mistaken for a pass.
const pgMissing = "PostgreSQL server binaries not found: run scripts/deps.sh (as root: apt-get install -y postgresql)"

// The cluster is shared by every test in one test binary: starting one costs
// about 1.5 s, a fresh database in it a few tens of milliseconds. This is
// test-only package state.
var (
	pgOnce    sync.Once
	pgShared  *pgCluster
	pgErr     error
	pgStopped bool
	pgMu      sync.Mutex // guards pgStopped and stop
)

// pgCluster is one throwaway PostgreSQL server.
type pgCluster struct {
	bin      string // directory of initdb, pg_ctl
	dir      string // everything lives here; removed at stop
	data     string
	logPath  string
	port     int
	password string
	asRoot   bool // run server binaries through runuser -u postgres
	admin    *sql.DB
	createMu sync.Mutex // serialises CREATE DATABASE (they share template1)
}

// Main runs the tests of a package that uses StartPostgres and then stops
// the shared cluster and removes its files. Call it from TestMain:
//
//	func TestMain(m *testing.M) { testharness.Main(m) }
//
// Without it the cluster is still stopped: a watchdog process started with
// the cluster stops it and removes its directory within a second or so of
// the test binary exiting, however it exits (including a -timeout panic or
// a kill). Main only makes that prompt and deterministic.
func Main(m *testing.M) {
	code := m.Run()
	stopSharedPostgres()
	os.Exit(code)
}

// StartPostgres returns the admin DSN
// (postgres://postgres:PW@127.0.0.1:PORT/DB?sslmode=disable) of a database
// created for this test in the test binary's throwaway cluster, which it
// starts on first use. The database is dropped when the test ends. The test
// fails if the PostgreSQL server binaries are not installed.
func StartPostgres(t testing.TB) string {
	t.Helper()
	pgOnce.Do(func() { pgShared, pgErr = startCluster() })
	if pgErr != nil {
		t.Fatal(pgErr)
	}
	c := pgShared
	name := "t_" + randomHex(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.createMu.Lock()
	_, err := c.admin.ExecContext(ctx, "CREATE DATABASE "+name)
	c.createMu.Unlock()
	if err != nil {
		t.Fatalf("postgres: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// FORCE ends connections a test left open instead of failing.
		if _, err := c.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("postgres: drop database %s: %v", name, err)
		}
	})
	return c.dsn(name)
}

func (c *pgCluster) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/%s?sslmode=disable", c.password, c.port, db)
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}

// findPostgresBin returns the bin directory of the highest installed major
// version of the Debian PostgreSQL packages.
func findPostgresBin() (string, error) {
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
		return "", errors.New(pgMissing)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].ver > cs[j].ver })
	return cs[0].bin, nil
}

// command runs a server binary, as the postgres user when we are root
// (initdb and postgres refuse to run as root).
func (c *pgCluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
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
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func (c *pgCluster) run(ctx context.Context, name string, args ...string) error {
	cmd := c.command(ctx, name, args...)
	if err := cmd.Run(); err != nil {
		out := cmd.Stdout.(*bytes.Buffer).String()
		// Output of initdb/pg_ctl never contains the password: it is
		// passed in a file.
		return fmt.Errorf("%s: %w\n%s", name, err, strings.TrimSpace(out))
	}
	return nil
}

func startCluster() (_ *pgCluster, err error) {
	bin, err := findPostgresBin()
	if err != nil {
		return nil, err
	}
	c := &pgCluster{bin: bin, asRoot: os.Geteuid() == 0}
	// The server user must reach the directory: TMPDIR may sit under a
	// private home directory, so fall back to /tmp when it is not
	// traversable by others.
	base := os.TempDir()
	if c.asRoot && !traversable(base) {
		base = "/tmp"
	}
	c.dir, err = os.MkdirTemp(base, "sigil-pg-")
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	// MkdirTemp makes a 0700 directory.
	if err := os.Chmod(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	c.data = filepath.Join(c.dir, "data")
	c.logPath = filepath.Join(c.dir, "postgres.log")
	pw := make([]byte, 24)
	if _, err := rand.Read(pw); err != nil {
		return nil, fmt.Errorf("postgres: password: %w", err)
	}
	c.password = hex.EncodeToString(pw)
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

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = c.run(ctx, "initdb", "-D", c.data, "-U", "postgres", "--pwfile="+pwFile,
		"--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--no-locale", "--no-sync")
	_ = os.Remove(pwFile)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}

	// The free port is found by binding and releasing it, so another
	// process may take it before the server binds: retry with a new one.
	for attempt := 1; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		opts := strings.Join([]string{
			"-p", strconv.Itoa(c.port), "-k", c.dir,
			"-c", "listen_addresses=127.0.0.1",
			// Throwaway data: durability buys nothing and costs time.
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "shared_buffers=16MB", "-c", "max_connections=300",
		}, " ")
		err = c.run(ctx, "pg_ctl", "-D", c.data, "-l", c.logPath, "-w", "-t", "60", "-o", opts, "start")
		if err == nil {
			break
		}
		if attempt == 3 {
			return nil, fmt.Errorf("postgres: start failed (log %s):\n%w\n--- log tail ---\n%s", c.logPath, err, tail(c.logPath, 30))
		}
	}
	c.startWatchdog()

	c.admin, err = sql.Open("pgx", c.dsn("postgres"))
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	c.admin.SetMaxOpenConns(4)
	if err := c.admin.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("postgres: connect (log %s): %w\n--- log tail ---\n%s", c.logPath, err, tail(c.logPath, 30))
	}
	return c, nil
}

// startWatchdog starts a detached shell that waits for this process to exit
// and then stops the server and removes its directory, so a test binary
// that does not use Main (or dies) leaks nothing. It has its own session so
// a Ctrl-C to the test's process group does not kill it first.
func (c *pgCluster) startWatchdog() {
	stop := c.command(context.Background(), "pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")
	script := `pid=$1; dir=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@" >/dev/null 2>&1
rm -rf "$dir"`
	args := append([]string{"-c", script, "sigil-pg-watchdog", strconv.Itoa(os.Getpid()), c.dir}, stop.Args...)
	w := exec.Command("/bin/sh", args...)
	w.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := w.Start(); err != nil {
		return // best effort: Main still stops the cluster
	}
	_ = w.Process.Release()
}

// stop stops the server (immediately: the data is thrown away) and removes
// its directory.
func (c *pgCluster) stop() {
	if c.admin != nil {
		_ = c.admin.Close()
	}
	if _, err := os.Stat(filepath.Join(c.data, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = c.run(ctx, "pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")
		cancel()
	}
	_ = os.RemoveAll(c.dir)
}

func stopSharedPostgres() {
	pgMu.Lock()
	defer pgMu.Unlock()
	if pgStopped || pgShared == nil {
		return
	}
	pgStopped = true
	pgShared.stop()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// traversable reports whether every directory from / to dir can be searched
// by other users.
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

// PostgresLeastPrivilegeAdmin creates a login role with CREATEROLE and no
// other attribute (not a superuser), as real deployments run a credential
// engine's admin, allowed to connect to dsn's database and to create in its
// public schema (which PostgreSQL 15 no longer grants to everyone). It
// returns dsn with that role's credentials. dsn must be a superuser DSN
// from StartPostgres. The role, and whatever it owns in the database, is
// dropped when the test ends (before the database is).
func PostgresLeastPrivilegeAdmin(t testing.TB, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("postgres: parse DSN: %v", err)
	}
	name := "lpadmin_" + randomHex(t, 6)
	pw := randomHex(t, 24)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dbName := strings.TrimPrefix(u.Path, "/")
	for _, q := range []string{
		// The name and password are hex: nothing to quote.
		"CREATE ROLE " + name + " LOGIN CREATEROLE PASSWORD '" + pw + "'",
		"GRANT CONNECT, CREATE ON DATABASE " + dbName + " TO " + name,
		"GRANT CREATE ON SCHEMA public TO " + name,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("postgres: create least-privilege admin: %v", err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Errorf("postgres: %v", err)
			return
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "DROP OWNED BY "+name); err != nil {
			t.Errorf("postgres: drop what %s owns: %v", name, err)
		}
		if _, err := db.ExecContext(ctx, "DROP ROLE IF EXISTS "+name); err != nil {
			t.Errorf("postgres: drop role %s: %v", name, err)
		}
	})
	u.User = url.UserPassword(name, pw)
	return u.String()
}
