package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-ca/sigil/internal/testharness" // also registers the "pgx" driver
)

// kill sends SIGKILL and waits for the process to be gone, so the cleanup's
// stop sees an exited process and does nothing.
func (d *devServer) kill(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill -9 server: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("server still running 30s after SIGKILL")
	}
}

// pgTarget is the throwaway database the engine mints roles in.
type pgTarget struct {
	dsn   string
	admin *sql.DB
}

func newPGTarget(t *testing.T) *pgTarget {
	t.Helper()
	dsn := testharness.StartPostgres(t)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(2)
	t.Cleanup(func() { db.Close() })
	return &pgTarget{dsn: dsn, admin: db}
}

// hostPort returns the database's address.
func (p *pgTarget) hostPort(t *testing.T) (host, port, dbname string) {
	t.Helper()
	u, err := url.Parse(p.dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname(), u.Port(), strings.TrimPrefix(u.Path, "/")
}

// dsnVia returns the admin DSN with its host:port replaced by addr.
func (p *pgTarget) dsnVia(t *testing.T, addr string) string {
	t.Helper()
	u, err := url.Parse(p.dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

func (p *pgTarget) roleExists(t *testing.T, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	if err := p.admin.QueryRowContext(ctx, `SELECT count(*) FROM pg_roles WHERE rolname = $1`, name).Scan(&n); err != nil {
		t.Fatalf("query pg_roles: %v", err)
	}
	return n > 0
}

// sigilRoles returns every sigil_-prefixed role and its VALID UNTIL (unix
// seconds, floor; 0 when unset).
func (p *pgTarget) sigilRoles(t *testing.T) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := p.admin.QueryContext(ctx, `SELECT rolname, coalesce(floor(extract(epoch FROM rolvaliduntil))::bigint, 0)
		FROM pg_roles WHERE rolname LIKE 'sigil\_%'`)
	if err != nil {
		t.Fatalf("query pg_roles: %v", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var name string
		var until int64
		if err := rows.Scan(&name, &until); err != nil {
			t.Fatal(err)
		}
		out[name] = until
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (p *pgTarget) validUntil(t *testing.T, name string) time.Time {
	t.Helper()
	var v sql.NullTime
	if err := p.admin.QueryRow(`SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1`, name).Scan(&v); err != nil {
		t.Fatalf("rolvaliduntil of %s: %v", name, err)
	}
	if !v.Valid {
		t.Fatalf("role %s has no VALID UNTIL", name)
	}
	return v.Time
}

// dropRole drops a role by hand, as an operator would.
func (p *pgTarget) dropRole(t *testing.T, name string) {
	t.Helper()
	if _, err := p.admin.Exec(`DROP ROLE ` + pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("drop role %s by hand: %v", name, err)
	}
}

// login connects as user/password with pgx and checks current_user.
func (p *pgTarget) login(t *testing.T, user, password string) error {
	t.Helper()
	conn, err := p.connectAs(t, user, password)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var cur string
	if err := conn.QueryRow(context.Background(), "SELECT current_user").Scan(&cur); err != nil {
		return err
	}
	if cur != user {
		return fmt.Errorf("logged in as %q, want %q", cur, user)
	}
	return nil
}

func (p *pgTarget) connectAs(t *testing.T, user, password string) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password = user, password
	cfg.ConnectTimeout = 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// psqlLogin logs in with the real psql client (password via PGPASSWORD)
// and returns current_user.
func (p *pgTarget) psqlLogin(t *testing.T, user, password string) (string, error) {
	t.Helper()
	host, port, db := p.hostPort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-w", "-tA",
		"-h", host, "-p", port, "-d", db, "-U", user, "-c", "SELECT current_user")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGSSLMODE=disable")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("psql: %v: %s", err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// creds is the JSON printed by `sigil creds --format json`.
type creds struct {
	LeaseID       string `json:"lease_id"`
	LeaseDuration int64  `json:"lease_duration"`
	Renewable     bool   `json:"renewable"`
	Data          struct {
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"data"`
}

// leaseJSON is the JSON of `sigil lease lookup|list|renew --format json`.
type leaseJSON struct {
	ID           string    `json:"id"`
	Identity     string    `json:"identity"`
	State        string    `json:"state"`
	Renewable    bool      `json:"renewable"`
	IssuedAt     time.Time `json:"issued_at"`
	ExpiresAt    time.Time `json:"expires_at"`
	MaxExpiresAt time.Time `json:"max_expires_at"`
	Attempts     int       `json:"attempts"`
	LastError    string    `json:"last_error"`
}

func mintCreds(t *testing.T, d *devServer, path string, extra ...string) creds {
	t.Helper()
	c := cliJSON[creds](t, d, append([]string{"creds", path, "--format", "json"}, extra...)...)
	if c.LeaseID == "" || c.Data.Username == "" || c.Data.Password == "" {
		t.Fatalf("creds %s: lease_id, data.username or data.password missing (lease %q, user %q, password %d chars)",
			path, c.LeaseID, c.Data.Username, len(c.Data.Password))
	}
	return c
}

func lookupLease(t *testing.T, d *devServer, id string) leaseJSON {
	t.Helper()
	out, stderr, code := d.cli(t, "lease", "lookup", id, "--format", "json")
	if code != 0 {
		t.Fatalf("lease lookup %s: code %d: %s", id, code, stderr)
	}
	var l leaseJSON
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("lease lookup %s: %v\n%s", id, err, out)
	}
	return l
}

func listLeases(t *testing.T, d *devServer, args ...string) []leaseJSON {
	t.Helper()
	out, stderr, code := d.cli(t, append([]string{"lease", "list", "--format", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("lease list %v: code %d: %s", args, code, stderr)
	}
	var ls []leaseJSON
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		t.Fatalf("lease list %v: %v\n%s", args, err, out)
	}
	return ls
}

// waitFor polls cond every 100 ms until it holds or timeout passes, and
// returns how long it took.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// setupPGMount mounts a postgres engine at mount against dsn with a role
// "readonly" whose creation statements come from a file.
func setupPGMount(t *testing.T, d *devServer, mount, dsn string) {
	t.Helper()
	stmts := filepath.Join(t.TempDir(), "creation.sql")
	err := os.WriteFile(stmts, []byte(`CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
GRANT pg_read_all_data TO {{name}};
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	steps := [][]string{
		{"engine", "enable", "postgres", "--mount", mount},
		{"engine", "configure", mount, "connection_url=" + dsn, "max_open_connections=4", "scram_iterations=16"},
		{"role", "write", mount + "/readonly", "creation_statements=@" + stmts, "default_ttl=1h", "max_ttl=24h"},
	}
	for _, s := range steps {
		if _, stderr, code := d.cli(t, s...); code != 0 {
			t.Fatalf("%s %s: code %d: %s", s[0], s[1], code, stderr)
		}
	}
}

// revokePrefix runs `sigil lease revoke --prefix P` with P in its
// documented form (ending in "/" at a mount or role boundary). If the
// server refuses that form as a malformed policy path, the test fails and
// the prefix is retried without its final slash so the rest of the test
// still runs.
func revokePrefix(t *testing.T, d *devServer, prefix string) string {
	t.Helper()
	out, stderr, code := d.cli(t, "lease", "revoke", "--prefix", prefix)
	if code != 0 && strings.Contains(stderr, "malformed path") {
		t.Errorf("BUG: lease revoke --prefix %s is refused: %s", prefix, strings.TrimSpace(stderr))
		out, stderr, code = d.cli(t, "lease", "revoke", "--prefix", strings.TrimSuffix(prefix, "/"))
	}
	if code != 0 {
		t.Fatalf("lease revoke --prefix %s: code %d: %s", prefix, code, stderr)
	}
	return out
}

func near(got, want time.Time, tol time.Duration) bool {
	d := got.Sub(want)
	return d > -tol && d < tol
}

// TestPostgresCredsLifecycle runs dynamic PostgreSQL credentials end to end:
// mint, log in (pgx and psql), look up, renew, revoke (by id, by prefix, by
// expiry, after a manual drop, after a restart), engine disable, and then
// looks for the minted passwords in everything the server wrote.
func TestPostgresCredsLifecycle(t *testing.T) {
	pg := newPGTarget(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dataDir)
	setupPGMount(t, d, "db", pg.dsn)
	var minted []creds // every password, for the canary
	mint := func(d *devServer, extra ...string) creds {
		t.Helper()
		c := mintCreds(t, d, "db/readonly", extra...)
		minted = append(minted, c)
		return c
	}

	// Mint and log in.
	c1 := mint(d)
	if !strings.HasPrefix(c1.LeaseID, "db/readonly/") || !c1.Renewable || c1.LeaseDuration < 3590 || c1.LeaseDuration > 3600 {
		t.Errorf("creds: lease_id %q renewable %v lease_duration %d; want db/readonly/…, true, ≈3600", c1.LeaseID, c1.Renewable, c1.LeaseDuration)
	}
	if !strings.HasPrefix(c1.Data.Username, "sigil_readonly_") || len(c1.Data.Username) > 63 {
		t.Errorf("username %q: want sigil_readonly_…, at most 63 bytes", c1.Data.Username)
	}
	if pw, err := hex.DecodeString(c1.Data.Password); err != nil || len(pw) != 32 {
		t.Errorf("password is not 256 bits of hex (%d chars)", len(c1.Data.Password))
	}
	if err := pg.login(t, c1.Data.Username, c1.Data.Password); err != nil {
		t.Fatalf("pgx login with minted credentials failed: %v", err)
	}
	if who, err := pg.psqlLogin(t, c1.Data.Username, c1.Data.Password); err != nil || who != c1.Data.Username {
		t.Fatalf("psql login with minted credentials: current_user %q, err %v", who, err)
	}
	if err := pg.login(t, c1.Data.Username, c1.Data.Password+"x"); err == nil {
		t.Fatal("login with a wrong password succeeded: the role does not check passwords")
	}
	if vu := pg.validUntil(t, c1.Data.Username); !near(vu, time.Now().Add(time.Hour), time.Minute) {
		t.Errorf("role VALID UNTIL %v, want ≈ now+1h", vu)
	}

	// Lookup and renew (also in the database, and capped at max_ttl).
	l := lookupLease(t, d, c1.LeaseID)
	if l.ID != c1.LeaseID || l.State != "active" || !l.Renewable || !near(l.ExpiresAt, time.Now().Add(time.Hour), time.Minute) ||
		!near(l.MaxExpiresAt, time.Now().Add(24*time.Hour), time.Minute) {
		t.Errorf("lease lookup = %+v; want active, renewable, expiring in ≈1h, max ≈24h", l)
	}
	out, stderr, code := d.cli(t, "lease", "renew", c1.LeaseID, "--increment", "2h", "--format", "json")
	var rl leaseJSON
	if code != 0 || json.Unmarshal([]byte(out), &rl) != nil {
		t.Fatalf("lease renew --increment 2h: code %d: %s %s", code, out, stderr)
	}
	if !near(rl.ExpiresAt, time.Now().Add(2*time.Hour), time.Minute) {
		t.Errorf("renewed lease expires %v, want ≈ now+2h", rl.ExpiresAt)
	}
	if l2 := lookupLease(t, d, c1.LeaseID); !l2.ExpiresAt.Equal(rl.ExpiresAt) {
		t.Errorf("lookup after renew expires %v, renew said %v", l2.ExpiresAt, rl.ExpiresAt)
	}
	if vu := pg.validUntil(t, c1.Data.Username); !near(vu, rl.ExpiresAt, 2*time.Second) {
		t.Errorf("role VALID UNTIL %v after renew, want the lease's new expiry %v", vu, rl.ExpiresAt)
	}
	out, stderr, code = d.cli(t, "lease", "renew", c1.LeaseID, "--increment", "48h", "--format", "json")
	if code != 0 || json.Unmarshal([]byte(out), &rl) != nil {
		t.Fatalf("lease renew --increment 48h: code %d: %s %s", code, out, stderr)
	}
	if !rl.ExpiresAt.Equal(l.MaxExpiresAt) {
		t.Errorf("renew past max_ttl: expires %v, want capped at max_expires_at %v", rl.ExpiresAt, l.MaxExpiresAt)
	}

	// Revoke by id: an open session is ended, logins fail, the role is gone.
	sess, err := pg.connectAs(t, c1.Data.Username, c1.Data.Password)
	if err != nil {
		t.Fatalf("open a session as the minted user: %v", err)
	}
	defer sess.Close(context.Background())
	if _, stderr, code := d.cli(t, "lease", "revoke", c1.LeaseID); code != 0 {
		t.Fatalf("lease revoke %s: code %d: %s", c1.LeaseID, code, stderr)
	}
	if pg.roleExists(t, c1.Data.Username) {
		t.Errorf("role %s still exists after lease revoke", c1.Data.Username)
	}
	if err := pg.login(t, c1.Data.Username, c1.Data.Password); err == nil {
		t.Errorf("login as %s still works after lease revoke", c1.Data.Username)
	}
	if psqlWho, err := pg.psqlLogin(t, c1.Data.Username, c1.Data.Password); err == nil {
		t.Errorf("psql login as %s still works after lease revoke (current_user %q)", c1.Data.Username, psqlWho)
	}
	if err := sess.Ping(context.Background()); err == nil {
		t.Errorf("a session opened by %s before revocation is still alive", c1.Data.Username)
	}
	if l := lookupLease(t, d, c1.LeaseID); l.State != "revoked" {
		t.Errorf("lease state after revoke = %q, want revoked", l.State)
	}
	if _, stderr, code := d.cli(t, "lease", "renew", c1.LeaseID); code == 0 {
		t.Errorf("renew of a revoked lease succeeded")
	} else if !strings.Contains(stderr, "not active") {
		t.Logf("renew of a revoked lease: %s", strings.TrimSpace(stderr))
	}

	// Revoke by prefix.
	c2, c3 := mint(d), mint(d)
	if n := len(listLeases(t, d, "--prefix", "db/readonly/")); n != 2 {
		t.Errorf("lease list --prefix db/readonly/ = %d leases, want 2", n)
	}
	if out := revokePrefix(t, d, "db/readonly/"); !strings.Contains(out, "revoked 2 lease(s)") {
		t.Errorf("lease revoke --prefix db/readonly/ = %q, want revoked 2 lease(s)", out)
	}
	for _, c := range []creds{c2, c3} {
		if pg.roleExists(t, c.Data.Username) {
			t.Errorf("role %s still exists after revoke --prefix", c.Data.Username)
		}
		if err := pg.login(t, c.Data.Username, c.Data.Password); err == nil {
			t.Errorf("login as %s works after revoke --prefix", c.Data.Username)
		}
	}
	if n := len(listLeases(t, d, "--prefix", "db/")); n != 0 {
		t.Errorf("%d active leases left after revoke --prefix", n)
	}

	// A 3-second lease disappears by itself.
	start := time.Now()
	c4 := mint(d, "--ttl", "3s")
	if c4.LeaseDuration < 2 || c4.LeaseDuration > 3 {
		t.Errorf("--ttl 3s: lease_duration %d", c4.LeaseDuration)
	}
	if err := pg.login(t, c4.Data.Username, c4.Data.Password); err != nil {
		t.Fatalf("login with the 3s credentials: %v", err)
	}
	waitFor(t, 10*time.Second, "3s lease's role dropped by the expiry worker", func() bool { return !pg.roleExists(t, c4.Data.Username) })
	t.Logf("3s lease: role gone %.1fs after mint", time.Since(start).Seconds())
	if l := lookupLease(t, d, c4.LeaseID); l.State != "revoked" {
		t.Errorf("expired lease state = %q, want revoked", l.State)
	}

	// A role dropped by hand: revocation succeeds idempotently.
	c5 := mint(d)
	pg.dropRole(t, c5.Data.Username)
	if _, stderr, code := d.cli(t, "lease", "revoke", c5.LeaseID); code != 0 {
		t.Errorf("revoke of a lease whose role was dropped by hand: code %d: %s", code, stderr)
	}
	if l := lookupLease(t, d, c5.LeaseID); l.State != "revoked" {
		t.Errorf("state after revoking a hand-dropped role = %q, want revoked", l.State)
	}
	if _, stderr, code := d.cli(t, "lease", "revoke", c5.LeaseID); code != 0 {
		t.Errorf("second revoke of a revoked lease: code %d: %s", code, stderr)
	}

	// A lease that expires while the server is stopped is revoked within
	// seconds of the next start.
	const stoppedTTL = 5 * time.Second
	minted6 := time.Now()
	c6 := mint(d, "--ttl", stoppedTTL.String())
	d.stop(t)
	if time.Since(minted6) >= stoppedTTL || !pg.roleExists(t, c6.Data.Username) {
		t.Fatalf("server took %v to mint and stop (ttl %v); the role must still exist for this check", time.Since(minted6), stoppedTTL)
	}
	time.Sleep(time.Until(minted6.Add(stoppedTTL + 2*time.Second)))
	if !pg.roleExists(t, c6.Data.Username) {
		t.Fatalf("role %s vanished while no server ran", c6.Data.Username)
	}
	restart := time.Now()
	d2 := startDev(t, dataDir)
	ready := time.Since(restart)
	took := waitFor(t, 10*time.Second, "lease expired while stopped: role dropped after restart", func() bool { return !pg.roleExists(t, c6.Data.Username) })
	t.Logf("restart: ready in %.1fs, expired lease revoked %.1fs later", ready.Seconds(), took.Seconds())
	if l := lookupLease(t, d2, c6.LeaseID); l.State != "revoked" {
		t.Errorf("lease expired while stopped: state %q after restart, want revoked", l.State)
	}

	// engine disable is refused while leases are active.
	c7 := mint(d2)
	out, stderr, code = d2.cli(t, "engine", "disable", "db")
	if code == 0 {
		t.Fatalf("engine disable db with an active lease succeeded: %s", out)
	}
	if !strings.Contains(stderr, "active lease") {
		t.Errorf("engine disable refusal does not say why: %s", stderr)
	}
	out, stderr, code = d2.cli(t, "engine", "list", "--format", "json")
	var engs []struct {
		Mount        string `json:"mount"`
		Type         string `json:"type"`
		ActiveLeases int64  `json:"active_leases"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &engs) != nil {
		t.Fatalf("engine list: code %d: %s %s", code, out, stderr)
	}
	if len(engs) != 1 || engs[0].Mount != "db" || engs[0].Type != "postgres" || engs[0].ActiveLeases != 1 {
		t.Errorf("engine list = %+v, want db postgres with 1 active lease", engs)
	}
	if !pg.roleExists(t, c7.Data.Username) {
		t.Errorf("refused disable dropped the role anyway")
	}
	if _, stderr, code := d2.cli(t, "engine", "disable", "db", "--revoke-leases"); code != 0 {
		t.Fatalf("engine disable db --revoke-leases: code %d: %s", code, stderr)
	}
	if pg.roleExists(t, c7.Data.Username) {
		t.Errorf("role %s still exists after engine disable --revoke-leases", c7.Data.Username)
	}
	if out, _, _ := d2.cli(t, "engine", "list", "--format", "json"); json.Unmarshal([]byte(out), &engs) != nil || len(engs) != 0 {
		t.Errorf("engine list after disable = %s", out)
	}
	d2.stop(t)

	// Canary: no minted password in the data directory or the server logs.
	var needles []needle
	for i, c := range minted {
		raw, err := hex.DecodeString(c.Data.Password)
		if err != nil {
			t.Fatalf("password %d is not hex", i)
		}
		needles = append(needles, secretNeedles(fmt.Sprintf("minted password %d", i), raw)...)
	}
	files := scanDir(t, dataDir, needles)
	scan(t, "first server's stderr", []byte(d.stderr.String()), needles)
	scan(t, "second server's stderr", []byte(d2.stderr.String()), needles)
	// Positive control: lease ids are stored in clear, so the scan reads
	// the right files.
	found := false
	_ = filepath.WalkDir(dataDir, func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(c1.LeaseID)) {
				found = true
			}
		}
		return nil
	})
	if !found {
		t.Errorf("positive control: lease id %s not found in the data directory; the canary scan reads nothing useful", c1.LeaseID)
	}
	t.Logf("canary: %d passwords, %d files, %d+%d bytes of server log", len(minted), files, len(d.stderr.String()), len(d2.stderr.String()))
}

// tcpProxy forwards a loopback port to PostgreSQL and can be cut, making
// the database unreachable (connection refused) to whoever dials the proxy.
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]struct{}
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	p := &tcpProxy{target: target, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close(); c.Close() }()
			go func() { _, _ = io.Copy(c, up); up.Close(); c.Close() }()
		}
	}()
}

// cut closes the listener and every forwarded connection.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// restore listens again on the same address.
func (p *tcpProxy) restore(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

// leaseConfig writes a server configuration that tunes the lease manager.
func leaseConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "lease.yaml")
	if err := os.WriteFile(p, []byte("lease:\n"+yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUnreachableDatabaseTurnsIrrevocable: a lease whose database cannot be
// reached is retried with backoff and, after lease.max_attempts, marked
// irrevocable (listed, never retried forever), while another mount's lease
// still expires on time; a plain revoke fails, --force forgets it and says
// so, and once the database is back an explicit revoke succeeds.
func TestUnreachableDatabaseTurnsIrrevocable(t *testing.T) {
	pg := newPGTarget(t)
	host, port, _ := pg.hostPort(t)
	proxy := startProxy(t, net.JoinHostPort(host, port))
	d := startDev(t, filepath.Join(t.TempDir(), "data"), "--config", leaseConfig(t, "  max_attempts: 3\n  backoff_base: 500ms\n  backoff_max: 1s\n"))
	setupPGMount(t, d, "db", pg.dsn)
	setupPGMount(t, d, "db2", pg.dsnVia(t, proxy.addr))

	a := mintCreds(t, d, "db2/readonly", "--ttl", "3s")
	b := mintCreds(t, d, "db2/readonly")
	t.Cleanup(func() {
		if pg.roleExists(t, b.Data.Username) {
			pg.dropRole(t, b.Data.Username)
		}
	})
	proxy.cut()
	start := time.Now()
	c := mintCreds(t, d, "db/readonly", "--ttl", "3s")

	// The other mount's short lease expires on time.
	waitFor(t, 10*time.Second, "db's 3s lease revoked while db2 is unreachable", func() bool { return !pg.roleExists(t, c.Data.Username) })
	t.Logf("db lease revoked %.1fs after mint while db2 was unreachable", time.Since(start).Seconds())

	// A plain revoke against the unreachable database fails and keeps the lease.
	_, stderr, code := d.cli(t, "lease", "revoke", b.LeaseID)
	if code == 0 {
		t.Errorf("revoke against an unreachable database reported success")
	}
	t.Logf("revoke against unreachable db: %s", strings.TrimSpace(stderr))
	if l := lookupLease(t, d, b.LeaseID); l.State != "active" {
		t.Errorf("failed revoke left the lease %q, want active", l.State)
	}
	// --force forgets it and records that the backend did not confirm.
	if _, stderr, code := d.cli(t, "lease", "revoke", "--force", b.LeaseID); code != 0 {
		t.Errorf("lease revoke --force: code %d: %s", code, stderr)
	}
	if l := lookupLease(t, d, b.LeaseID); l.State != "revoked" || !strings.HasPrefix(l.LastError, "forced: revoked without backend confirmation") {
		t.Errorf("after --force: state %q last_error %q; want revoked, forced: revoked without backend confirmation…", l.State, l.LastError)
	}
	if !pg.roleExists(t, b.Data.Username) {
		t.Errorf("--force against an unreachable database somehow dropped the role")
	}

	// The expired lease on the unreachable database is retried, then given
	// up on: irrevocable, listed, and never retried forever.
	var l leaseJSON
	waitFor(t, 30*time.Second, "expired lease on the unreachable database marked irrevocable", func() bool {
		l = lookupLease(t, d, a.LeaseID)
		return l.State == "irrevocable"
	})
	if l.Attempts != 3 || l.LastError == "" {
		t.Errorf("irrevocable lease: attempts %d last_error %q; want 3 attempts and the last error", l.Attempts, l.LastError)
	}
	if !pg.roleExists(t, a.Data.Username) {
		t.Errorf("role of the unrevocable lease vanished")
	}
	irr := listLeases(t, d, "--irrevocable")
	if len(irr) != 1 || irr[0].ID != a.LeaseID {
		t.Errorf("lease list --irrevocable = %+v, want just %s", irr, a.LeaseID)
	}
	t.Logf("irrevocable after %.1fs: attempts %d, last_error %q", time.Since(start).Seconds(), l.Attempts, l.LastError)

	// Once the database is reachable again, an explicit revoke succeeds.
	proxy.restore(t)
	if _, stderr, code := d.cli(t, "lease", "revoke", a.LeaseID); code != 0 {
		t.Fatalf("revoke of the irrevocable lease once the database is back: %s", stderr)
	}
	if pg.roleExists(t, a.Data.Username) {
		t.Errorf("role still exists after the explicit revoke")
	}
	if l = lookupLease(t, d, a.LeaseID); l.State != "revoked" {
		t.Errorf("lease state %q after the explicit revoke, want revoked", l.State)
	}
}

// runSigil runs the CLI against a server's exported environment without
// touching t, for use from goroutines.
func runSigil(exports map[string]string, timeout time.Duration, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+exports["SIGIL_ADDR"], "SIGIL_TOKEN="+exports["SIGIL_TOKEN"], "SIGIL_CACERT="+exports["SIGIL_CACERT"])
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// TestKillNineNoOrphans mints continuously from three clients while the
// server is killed with SIGKILL at random moments, then checks that every
// sigil_ role in PostgreSQL has an active lease and every active lease a
// role, and that revoke-prefix leaves none.
func TestKillNineNoOrphans(t *testing.T) {
	const rounds = 20
	pg := newPGTarget(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	// A short mint timeout makes leases interrupted mid-mint due within
	// seconds instead of 40 s.
	killCfg := leaseConfig(t, "  mint_timeout: 2s\n")
	d := startDev(t, dataDir, "--config", killCfg)
	setupPGMount(t, d, "db", pg.dsn)
	// Roles are cluster-wide and the cluster is shared by this package's
	// tests: ignore sigil_ roles another test left behind.
	baseline := map[string]bool{}
	for name := range pg.sigilRoles(t) {
		baseline[name] = true
	}
	if len(baseline) > 0 {
		t.Logf("ignoring %d sigil_ roles present before this test", len(baseline))
	}

	var (
		cur     atomic.Pointer[devServer]
		mu      sync.Mutex
		got     = map[string]string{} // lease id -> username, as received by clients
		ok, bad atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := cur.Load()
				if s == nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				out, _, err := runSigil(s.exports, 15*time.Second, "creds", "db/readonly", "--ttl", "1h", "--format", "json")
				var c creds
				if err != nil || json.Unmarshal([]byte(out), &c) != nil || c.LeaseID == "" || c.Data.Username == "" {
					bad.Add(1)
					continue
				}
				ok.Add(1)
				mu.Lock()
				got[c.LeaseID] = c.Data.Username
				mu.Unlock()
			}
		}()
	}

	t0 := time.Now()
	for i := range rounds {
		if i > 0 {
			d = startDev(t, dataDir, "--config", killCfg)
		}
		cur.Store(d)
		// Kill at a random moment once this server has minted at least
		// once (bounded wait), so every round cuts through minting even
		// on a loaded machine where the CLI takes long to start.
		before := ok.Load()
		for deadline := time.Now().Add(5 * time.Second); ok.Load() == before && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(401)) * time.Millisecond)
		d.kill(t)
		cur.Store(nil)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d rounds of kill -9 in %.1fs: %d mints returned to clients, %d failed", rounds, time.Since(t0).Seconds(), ok.Load(), bad.Load())
	if ok.Load() < rounds {
		t.Errorf("only %d mints succeeded in %d rounds: the kill windows are not exercising minting", ok.Load(), rounds)
	}

	d = startDev(t, dataDir, "--config", killCfg)
	// Wait until no lease is mid-mint: a pending lease expires 2×MintTimeout
	// after issue, far below the 1h of a completed one.
	isPending := func(l leaseJSON) bool { return l.ExpiresAt.Sub(l.IssuedAt) < 10*time.Minute }
	var leases []leaseJSON
	t1 := time.Now()
	deadline := 150 * time.Second
	for first := true; ; first = false {
		leases = listLeases(t, d, "--prefix", "db/")
		n := 0
		for _, l := range leases {
			if isPending(l) {
				n++
			}
		}
		if first {
			// Even now, before reconciliation, every role no client
			// received must belong to an active lease no client received:
			// one killed mid-mint (pending) or killed before its answer
			// got out.
			mu.Lock()
			seenUser, seenLease := map[string]bool{}, map[string]bool{}
			for id, u := range got {
				seenUser[u], seenLease[id] = true, true
			}
			mu.Unlock()
			unseenRoles, unseenLeases := 0, 0
			for name := range pg.sigilRoles(t) {
				if !baseline[name] && !seenUser[name] {
					unseenRoles++
				}
			}
			for _, l := range leases {
				if !seenLease[l.ID] {
					unseenLeases++
				}
			}
			t.Logf("at the last restart: %d active leases (%d pending, mid-mint at a kill; %d never returned to a client), %d roles no client received",
				len(leases), n, unseenLeases, unseenRoles)
			if unseenRoles > unseenLeases {
				t.Errorf("%d roles no client received but only %d active leases no client received: orphans", unseenRoles, unseenLeases)
			}
		}
		if n == 0 {
			break
		}
		if time.Since(t1) > deadline {
			t.Fatalf("%d leases still pending %v after the last restart", n, deadline)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("pending leases resolved %.1fs after the last restart", time.Since(t1).Seconds())

	roles := pg.sigilRoles(t)
	for name := range baseline {
		delete(roles, name)
	}
	active := map[string]leaseJSON{}
	for _, l := range leases {
		active[l.ID] = l
	}
	users := map[string]bool{}
	// Every credential a client received has its active lease and role,
	// and the role's VALID UNTIL is the lease's expiry.
	for id, user := range got {
		users[user] = true
		l, isActive := active[id]
		until, exists := roles[user]
		switch {
		case !isActive:
			t.Errorf("credential %s was returned to a client but its lease %s is not active", user, id)
		case !exists:
			t.Errorf("lease %s is active but its role %s does not exist", id, user)
		case until != l.ExpiresAt.Unix():
			t.Errorf("role %s VALID UNTIL %d differs from its lease's expiry %d", user, until, l.ExpiresAt.Unix())
		}
	}
	// The rest (minted but lost with the killed server's response) must
	// pair up too: equal counts, and equal multisets of expiry seconds.
	var restLeases, restRoles []int64
	for id, l := range active {
		if _, known := got[id]; !known {
			restLeases = append(restLeases, l.ExpiresAt.Unix())
		}
	}
	var orphans []string
	for name, until := range roles {
		if !users[name] {
			restRoles = append(restRoles, until)
			orphans = append(orphans, name)
		}
	}
	sort.Slice(restLeases, func(i, j int) bool { return restLeases[i] < restLeases[j] })
	sort.Slice(restRoles, func(i, j int) bool { return restRoles[i] < restRoles[j] })
	if len(roles) != len(active) {
		t.Errorf("%d sigil_ roles in PostgreSQL but %d active leases (roles not seen by a client: %v)", len(roles), len(active), orphans)
	}
	if !slices.Equal(restLeases, restRoles) {
		t.Errorf("leases and roles not returned to a client do not pair up by expiry:\nleases %v\nroles  %v", restLeases, restRoles)
	}
	t.Logf("after restart: %d active leases, %d sigil_ roles (%d not seen by any client)", len(active), len(roles), len(restLeases))

	out := revokePrefix(t, d, "db/")
	t.Logf("revoke --prefix db/: %s", strings.TrimSpace(out))
	left := pg.sigilRoles(t)
	for name := range baseline {
		delete(left, name)
	}
	if len(left) != 0 {
		t.Errorf("%d sigil_ roles remain after lease revoke --prefix db/: %v", len(left), slices.Sorted(maps.Keys(left)))
	}
	if n := len(listLeases(t, d, "--prefix", "db/")); n != 0 {
		t.Errorf("%d active leases remain after revoke --prefix db/", n)
	}
}

// TestMintedPasswordsNotInPostgresStore runs Sigil on PostgreSQL storage and
// checks that a dump of its own database never holds a minted password (or
// the engine's admin DSN password), in any encoding.
func TestMintedPasswordsNotInPostgresStore(t *testing.T) {
	target := newPGTarget(t)
	storeDSN := testharness.StartPostgres(t)
	d := startDev(t, filepath.Join(t.TempDir(), "data"), "--storage", storeDSN)
	setupPGMount(t, d, "db", target.dsn)
	var needles []needle
	for i := 0; i < 3; i++ {
		c := mintCreds(t, d, "db/readonly")
		if err := target.login(t, c.Data.Username, c.Data.Password); err != nil {
			t.Fatalf("minted credential does not log in: %v", err)
		}
		needles = append(needles, secretNeedles("minted password", []byte(c.Data.Password))...)
	}
	if u, err := url.Parse(target.dsn); err == nil {
		if pw, ok := u.User.Password(); ok {
			needles = append(needles, secretNeedles("engine connection password", []byte(pw))...)
		}
	}
	dump := pgDump(t, storeDSN)
	if !bytes.Contains(dump, []byte("db/readonly/")) {
		t.Fatal("the dump holds no lease id: the scan is not reading Sigil's store")
	}
	scan(t, "pg_dump of Sigil's store", dump, needles)
	scan(t, "server log", []byte(d.stderr.String()), needles)
}

// TestResponseWrapping: `creds --wrap-ttl` returns a single-use token
// instead of the secret; `sigil unwrap` returns it once, a second unwrap
// fails, and the audit log records both.
func TestResponseWrapping(t *testing.T) {
	target := newPGTarget(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	d := startDev(t, dataDir)
	setupPGMount(t, d, "db", target.dsn)
	out, stderr, code := d.cli(t, "creds", "db/readonly", "--wrap-ttl", "5m", "--format", "json")
	var wrapped struct {
		LeaseID   string `json:"lease_id"`
		WrapToken string `json:"wrap_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &wrapped) != nil || wrapped.WrapToken == "" {
		t.Fatalf("creds --wrap-ttl: %s %s", out, stderr)
	}
	if strings.Contains(out, "password") {
		t.Fatalf("a wrapped response carries the secret: %s", out)
	}
	// A wrapping token is no API token.
	if _, _, code := d.cli(t, "ca", "list", "--token", wrapped.WrapToken); code != 1 {
		t.Error("a wrapping token worked as an API token")
	}
	// That refused call spent nothing: the token still unwraps, once.
	out, stderr, code = d.cli(t, "unwrap", wrapped.WrapToken, "--format", "json")
	var c creds
	if code != 0 || json.Unmarshal([]byte(out), &c) != nil || c.LeaseID != wrapped.LeaseID || c.Data.Password == "" {
		t.Fatalf("unwrap: %s %s", out, stderr)
	}
	if err := target.login(t, c.Data.Username, c.Data.Password); err != nil {
		t.Fatalf("unwrapped credential does not log in: %v", err)
	}
	if _, stderr, code := d.cli(t, "unwrap", wrapped.WrapToken); code != 1 || !strings.Contains(stderr, "already unwrapped") {
		t.Fatalf("second unwrap: code %d %s", code, stderr)
	}
	// Both attempts are in the audit log, and the chain holds.
	if out, stderr, code := d.cli(t, "audit", "verify", "--format", "json"); code != 0 || !strings.Contains(out, `"ok": true`) {
		t.Fatalf("audit verify: %s %s", out, stderr)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "sigil.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ok, refused int
	if err := db.QueryRow(`SELECT
		SUM(CASE WHEN r LIKE '%WrapService/Unwrap%' AND r LIKE '%"allowed":true%' THEN 1 ELSE 0 END),
		SUM(CASE WHEN r LIKE '%WrapService/Unwrap%' AND r LIKE '%"allowed":false%' THEN 1 ELSE 0 END)
		FROM (SELECT CAST(record AS TEXT) AS r FROM audit_log)`).Scan(&ok, &refused); err != nil {
		t.Fatal(err)
	}
	if ok != 1 || refused != 1 {
		t.Fatalf("audit log has %d successful and %d refused unwraps, want 1 and 1", ok, refused)
	}
	// Canary: the audit log holds neither the minted password nor any token.
	var log strings.Builder
	rows, err := db.Query(`SELECT CAST(record AS TEXT) FROM audit_log ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		log.WriteString(r)
	}
	rows.Close()
	needles := append(secretNeedles("minted password", []byte(c.Data.Password)), secretNeedles("wrapping token", []byte(wrapped.WrapToken))...)
	needles = append(needles, secretNeedles("root token", []byte(d.exports["SIGIL_TOKEN"]))...)
	scan(t, "audit log", []byte(log.String()), needles)
}

// TestWorkloadGetsOnlyItsCreds: a workload enrolls with a join token, then
// with its SVID alone gets db/creds/payments-ro (granted by the policy bound
// to its SPIFFE ID) but not db/creds/admin nor sys/ paths; a token with the
// same policy behaves the same; the join token works once.
func TestWorkloadGetsOnlyItsCreds(t *testing.T) {
	target := newPGTarget(t)
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	setupPGMount(t, d, "db", target.dsn)
	stmts := filepath.Join(dir, "c.sql")
	if err := os.WriteFile(stmts, []byte("CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"payments-ro", "admin"} {
		if _, stderr, code := d.cli(t, "role", "write", "db/"+role, "creation_statements=@"+stmts, "default_ttl=1h"); code != 0 {
			t.Fatalf("role write %s: %s", role, stderr)
		}
	}
	pol := filepath.Join(dir, "payments.yaml")
	if err := os.WriteFile(pol, []byte(`rules:
  - path: "db/creds/payments-*"
    capabilities: [read]
bindings:
  spiffe_ids: ["spiffe://sigil.test/ns/payments/*"]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "policy", "write", "payments", pol); code != 0 {
		t.Fatalf("policy write: %s", stderr)
	}
	const id = "spiffe://sigil.test/ns/payments/api"
	join, stderr, code := d.cli(t, "identity", "join-token", "create", "--spiffe-id", id)
	join = strings.TrimSpace(join)
	if code != 0 {
		t.Fatalf("join token: %s", stderr)
	}
	root := d.exports["SIGIL_TOKEN"]
	d.exports["SIGIL_TOKEN"] = ""
	defer func() { d.exports["SIGIL_TOKEN"] = root }()
	key, cert := filepath.Join(dir, "api.key"), filepath.Join(dir, "api.pem")
	if _, stderr, code := d.cli(t, "identity", "enroll", "--join-token", join, "--spiffe-id", id, "--key-out", key, "--cert-out", cert); code != 0 {
		t.Fatalf("enroll: %s", stderr)
	}
	if _, stderr, code := d.cli(t, "identity", "enroll", "--join-token", join, "--spiffe-id", id, "--key-out", key+"2", "--cert-out", cert+"2"); code != 1 || !strings.Contains(stderr, "already used") {
		t.Fatalf("second use of the join token: %d %s", code, stderr)
	}
	d.exports["SIGIL_TOKEN"] = root
	tokOut, _, _ := d.cli(t, "token", "create", "--policy", "payments", "--format", "json")
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(tokOut), &tok); err != nil || tok.Token == "" {
		t.Fatalf("token create: %s", tokOut)
	}
	d.exports["SIGIL_TOKEN"] = ""

	callers := map[string][]string{
		"svid":  {"--client-cert", cert, "--client-key", key},
		"token": {"--token", tok.Token},
	}
	for name, auth := range callers {
		t.Run(name, func(t *testing.T) {
			out, stderr, code := d.cli(t, append([]string{"creds", "db/payments-ro", "--format", "json"}, auth...)...)
			var c creds
			if code != 0 || json.Unmarshal([]byte(out), &c) != nil || c.Data.Password == "" {
				t.Fatalf("creds db/payments-ro: %d %s", code, stderr)
			}
			if err := target.login(t, c.Data.Username, c.Data.Password); err != nil {
				t.Fatalf("granted credential does not log in: %v", err)
			}
			denied := [][]string{
				{"creds", "db/admin"},
				{"policy", "list"},
				{"policy", "write", "payments", pol},
				{"engine", "list"},
			}
			for _, args := range denied {
				if _, stderr, code := d.cli(t, append(args, auth...)...); code != 1 || !strings.Contains(stderr, "permission denied") {
					t.Errorf("%v: code %d %s", args, code, stderr)
				}
			}
		})
	}
}
