package pgcluster

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Fault injection for high-availability tests: stop and start the server
// in place (same port and data), make a streaming standby of it, and
// promote a standby.

// StopServer stops the server at once (as a crash would) and keeps its
// data, so StartServer brings it back on the same port.
func (c *Cluster) StopServer(ctx context.Context) error {
	return c.run(ctx, "pg_ctl", "-D", c.data, "-m", "immediate", "-w", "-t", "60", "stop")
}

// StartServer starts a stopped server again with its original options.
func (c *Cluster) StartServer(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.data, "-l", c.logPath, "-w", "-t", "60", "-o", c.startOpts, "start"); err != nil {
		return fmt.Errorf("postgres: restart (log %s): %w\n%s", c.logPath, err, c.LogTail(20))
	}
	return nil
}

// Standby makes a streaming replica of c with pg_basebackup -R (which
// writes primary_conninfo and standby.signal) and starts it on a new port.
// The replica has its own directory and watchdog; Stop removes it.
func (c *Cluster) Standby(ctx context.Context) (_ *Cluster, err error) {
	s := &Cluster{bin: c.bin, asRoot: c.asRoot, password: c.password}
	if s.dir, err = os.MkdirTemp(filepath.Dir(c.dir), "sigil-pg-standby-"); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s.data = filepath.Join(s.dir, "data")
	s.logPath = filepath.Join(s.dir, "postgres.log")
	if c.asRoot {
		if err := chownToPostgres(s.dir); err != nil {
			return nil, err
		}
	}
	// The password goes in a passfile the server user can read, never on
	// the command line.
	pass := filepath.Join(s.dir, "pgpass")
	if err := os.WriteFile(pass, []byte(fmt.Sprintf("127.0.0.1:%d:*:postgres:%s\n", c.port, c.password)), 0o600); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if c.asRoot {
		if err := chownToPostgres(pass); err != nil {
			return nil, err
		}
	}
	cmd := c.command(ctx, "pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", "postgres",
		"-D", s.data, "-R", "-X", "stream", "--no-sync", "-c", "fast")
	cmd.Env = append(os.Environ(), "PGPASSFILE="+pass)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("postgres: pg_basebackup: %w\n%s", err, cmd.Stdout)
	}
	if s.port, err = freePort(); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s.startOpts = strings.Replace(c.startOpts, "-p "+strconv.Itoa(c.port)+" -k "+c.dir, "-p "+strconv.Itoa(s.port)+" -k "+s.dir, 1)
	// primary_conninfo names passfile: keep the file for the walreceiver.
	if err := s.StartServer(ctx); err != nil {
		return nil, err
	}
	s.startWatchdog()
	return s, nil
}

// Promote ends recovery on a standby: it becomes a read-write primary.
func (c *Cluster) Promote(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.data, "-w", "-t", "60", "promote"); err != nil {
		return fmt.Errorf("postgres: promote: %w", err)
	}
	// pg_ctl -w returns once promoted; give the server a moment to accept
	// read-write sessions under load.
	time.Sleep(100 * time.Millisecond)
	return nil
}

// chownToPostgres gives path to the postgres user (we run as root).
func chownToPostgres(path string) error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("postgres: running as root needs the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}
