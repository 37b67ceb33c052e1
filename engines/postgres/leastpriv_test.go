package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/postgres"
	"github.com/sigil-ca/sigil/internal/testharness"
)

func TestSplitStatements(t *testing.T) {
	for _, tc := range []struct {
		name, sql string
		want      []string
	}{
		{"plain", "A; B;\nC", []string{"A", "B", "C"}},
		{"empty and comments", "; -- only a comment\n; /* block */ ;A", []string{"A"}},
		{"quoted semicolons", `CREATE ROLE "a;b" PASSWORD 'x;y''z;'; B`, []string{`CREATE ROLE "a;b" PASSWORD 'x;y''z;'`, "B"}},
		{"escape string", `SELECT E'a\';b'; C`, []string{`SELECT E'a\';b'`, "C"}},
		{"dollar quote", "DO $f$ BEGIN PERFORM 1; END $f$; D", []string{"DO $f$ BEGIN PERFORM 1; END $f$", "D"}},
		{"bare dollar quote", "SELECT $$a;b$$; E", []string{"SELECT $$a;b$$", "E"}},
		{"positional parameter", "SELECT $1; F", []string{"SELECT $1", "F"}},
		{"line comment with semicolon", "A -- x; y\n; B", []string{"A -- x; y", "B"}},
		{"nested block comment", "A /* x /* ; */ ; */; B", []string{"A /* x /* ; */ ; */", "B"}},
		{"default revocation", postgres.DefaultRevocation, []string{
			"ALTER ROLE {{name}} NOLOGIN",
			"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {{name_literal}} AND pid <> pg_backend_pid()",
			"REASSIGN OWNED BY {{name}} TO CURRENT_USER",
			"DROP OWNED BY {{name}}",
			"DROP ROLE IF EXISTS {{name}}",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := postgres.SplitStatementsForTest(tc.sql); !slices.Equal(got, tc.want) {
				t.Errorf("split %q\n got %q\nwant %q", tc.sql, got, tc.want)
			}
		})
	}
}

// engine configure checks the admin's privileges and names what is
// missing, instead of failing later at mint or revocation time.
func TestConfigureChecksPrivileges(t *testing.T) {
	ctx := context.Background()
	superDSN := testharness.StartPostgres(t)
	lp := testharness.PostgresLeastPrivilegeAdmin(t, superDSN)
	c, err := pgx.Connect(ctx, superDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// The same admin without CREATEROLE.
	u, _, _ := strings.Cut(strings.TrimPrefix(lp, "postgres://"), ":")
	if _, err := c.Exec(ctx, "ALTER ROLE "+pgx.Identifier{u}.Sanitize()+" NOCREATEROLE"); err != nil {
		t.Fatal(err)
	}
	e := newBare()
	defer e.Close()
	_, err = e.Configure(ctx, map[string]string{postgres.KeyConnectionURL: lp})
	if !errors.Is(err, engines.ErrRejected) || !strings.Contains(err.Error(), "lacks CREATEROLE") || !strings.Contains(err.Error(), u) {
		t.Fatalf("configure with an admin without CREATEROLE: %v; want ErrRejected naming the role and CREATEROLE", err)
	}
	if _, err := c.Exec(ctx, "ALTER ROLE "+pgx.Identifier{u}.Sanitize()+" CREATEROLE"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Configure(ctx, map[string]string{postgres.KeyConnectionURL: lp}); err != nil {
		t.Fatalf("configure with a CREATEROLE admin: %v", err)
	}
}

// A CREATEROLE admin revokes a role that it was never granted (created
// before the engine granted new roles to its admin, or by hand): the
// default revocation's optional steps fail there, and they must not roll
// back NOLOGIN and DROP ROLE. On PostgreSQL 15 the old engine failed with
// "must be a member of the role whose process is being terminated" and the
// role kept logging in.
func TestLeastPrivilegeRevokesUngrantedRole(t *testing.T) {
	ctx := context.Background()
	e, dsn, _ := newEngineAs(t, createRole)
	name := uniq(t, e, "sigil_legacy")
	const pw = "legacy-password-1"
	if err := e.ExecForTest(ctx, "CREATE ROLE "+pgx.Identifier{name}.Sanitize()+" LOGIN PASSWORD '"+pw+"'"); err != nil {
		t.Fatal(err)
	}
	cfg, _ := pgx.ParseConfig(dsn)
	cfg.User, cfg.Password = name, pw
	held, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("login as the legacy role: %v", err)
	}
	defer held.Close(ctx)
	rev := []byte(`{"username":"` + name + `","revocation_statements":` + jsonString(postgres.DefaultRevocation) + `}`)
	if err := e.Revoke(ctx, rev); err != nil {
		t.Fatalf("revoke as a CREATEROLE admin: %v", err)
	}
	if roleExists(t, e, name) {
		t.Fatal("role survives revocation")
	}
	if err := login(ctx, dsn, name, pw); err == nil {
		t.Fatal("login still works after revocation")
	}
	if err := held.Ping(ctx); err == nil {
		t.Error("the role's session survived revocation")
	}

	// A failing optional step in custom statements does not keep the role.
	p, s := mint(t, e, "custom", map[string]string{postgres.KeyRevocation: "ALTER ROLE {{name}} NOLOGIN; REVOKE ALL ON TABLE no_such_table FROM {{name}}; DROP ROLE IF EXISTS {{name}};"})
	if err := e.Revoke(ctx, p.Revocation); err != nil {
		t.Fatalf("revoke with a failing optional statement: %v", err)
	}
	if roleExists(t, e, s.Data["username"]) {
		t.Fatal("role survives a revocation whose optional statement failed")
	}
}

func jsonString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// A create's backend work is bounded on the server side by the caller's
// deadline. Here the connection to PostgreSQL is cut mid-create, as when
// Sigil is killed or the network fails: no cancel request reaches the
// server, which runs the creation to its end unless statement_timeout
// stops it. Before, the role committed two seconds later, long after the
// lease manager had given up on it.
func TestCreateBoundedServerSide(t *testing.T) {
	for _, a := range admins {
		t.Run(a.name, func(t *testing.T) {
			ctx := context.Background()
			_, dsn, superDSN := newEngineAs(t, a)
			u, err := url.Parse(dsn)
			if err != nil {
				t.Fatal(err)
			}
			px := startCutProxy(t, u.Host)
			u.Host = px.addr
			e := newBare()
			defer e.Close()
			if _, err := e.Configure(ctx, map[string]string{postgres.KeyConnectionURL: u.String()}); err != nil {
				t.Fatal(err)
			}
			norm, err := e.ValidateRole(ctx, "slow", map[string]string{postgres.KeyCreation: postgres.DefaultCreation + " SELECT pg_sleep(2);"})
			if err != nil {
				t.Fatal(err)
			}
			p, err := e.Prepare(ctx, engines.Role{Name: "slow", Fields: norm}, engines.MintRequest{Role: "slow", Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			var r struct{ Username string }
			if err := json.Unmarshal(p.Revocation, &r); err != nil {
				t.Fatal(err)
			}
			direct := newBare()
			defer direct.Close()
			if _, err := direct.Configure(ctx, map[string]string{postgres.KeyConnectionURL: superDSN}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = direct.Revoke(context.Background(), p.Revocation) })
			time.AfterFunc(150*time.Millisecond, px.cut)
			cctx, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
			_, err = e.Create(cctx, p)
			cancel()
			if err == nil {
				t.Fatal("a create whose connection was cut succeeded")
			}
			if !errors.Is(err, engines.ErrOutcomeUnknown) {
				t.Errorf("a lost connection is not reported as an unknown outcome: %v", err)
			}
			time.Sleep(2500 * time.Millisecond) // past the slow statement's end
			if roleExists(t, direct, r.Username) {
				t.Fatal("the role committed after the create's deadline")
			}
		})
	}
}

// cutProxy forwards TCP connections until cut, which closes them all and
// refuses new ones (so not even a cancel request gets through).
type cutProxy struct {
	addr  string
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	dead  bool
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{addr: ln.Addr().String(), ln: ln}
	t.Cleanup(p.cut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.dead {
				p.mu.Unlock()
				c.Close()
				s.Close()
				return
			}
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dead = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
}

// A refusal PostgreSQL reports is certain and final: ErrRejected, not an
// unknown outcome.
func TestCreateRejected(t *testing.T) {
	ctx := context.Background()
	e, _, _ := newEngineAs(t, createRole)
	norm, err := e.ValidateRole(ctx, "bad", map[string]string{postgres.KeyCreation: postgres.DefaultCreation + " GRANT SELECT ON no_such_table TO {{name}};"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.Prepare(ctx, engines.Role{Name: "bad", Fields: norm}, engines.MintRequest{Role: "bad", Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Create(ctx, p)
	if !errors.Is(err, engines.ErrRejected) || errors.Is(err, engines.ErrOutcomeUnknown) {
		t.Fatalf("create with a bad statement: %v; want ErrRejected", err)
	}
	// The engine's connection came back clean: the next create works.
	p2, _ := mint(t, e, "good", nil)
	if err := e.Revoke(ctx, p2.Revocation); err != nil {
		t.Fatal(err)
	}
}
