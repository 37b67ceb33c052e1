package postgres_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/postgres"
	"github.com/sigil-ca/sigil/internal/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

func newBare() *postgres.Engine {
	e, _ := postgres.Factory(engines.Env{})
	return e.(*postgres.Engine)
}

func newEngine(t testing.TB) (*postgres.Engine, string) {
	t.Helper()
	e, dsn, _ := newEngineAs(t, superuser)
	return e, dsn
}

// admin is the kind of PostgreSQL role the engine is configured with.
type admin struct {
	name           string
	leastPrivilege bool // CREATEROLE, not a superuser
}

var (
	superuser  = admin{"superuser", false}
	createRole = admin{"createrole", true}
	// admins are what the engine tests run against: both must work.
	admins = []admin{superuser, createRole}
)

// newEngineAs returns an engine configured with admin a on a fresh
// database, a's DSN and a superuser DSN of the same database (for checks
// only a superuser can make, such as reading pg_authid).
func newEngineAs(t testing.TB, a admin) (e *postgres.Engine, dsn, superDSN string) {
	t.Helper()
	superDSN = testharness.StartPostgres(t)
	dsn = superDSN
	if a.leastPrivilege {
		dsn = testharness.PostgresLeastPrivilegeAdmin(t, superDSN)
	}
	eng, err := postgres.Factory(engines.Env{Mount: "db"})
	if err != nil {
		t.Fatal(err)
	}
	e = eng.(*postgres.Engine)
	if _, err := e.Configure(context.Background(), map[string]string{postgres.KeyConnectionURL: dsn, postgres.KeyMaxOpenConnections: "8"}); err != nil {
		t.Fatalf("configure as %s: %v", a.name, err)
	}
	t.Cleanup(func() { e.Close() })
	return e, dsn, superDSN
}

// queryAs runs a one-row query on dsn.
func queryAs(t *testing.T, dsn, q string, args []any, dest ...any) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := c.QueryRow(ctx, q, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// login connects to dsn's database as user/password.
func login(ctx context.Context, dsn, user, password string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.User, cfg.Password = user, password
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	var who string
	if err := c.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil {
		return err
	}
	if who != user {
		return fmt.Errorf("connected as %q", who)
	}
	return nil
}

// uniq returns a role name unique in the shared cluster, dropped (with
// what it owns in the test database) when the test ends.
func uniq(t *testing.T, e *postgres.Engine, base string) string {
	t.Helper()
	name := postgres.UsernameForTest(base+"_{{random}}", "", time.Now())
	dsn := e.ConfigForTest()[postgres.KeyConnectionURL]
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP OWNED BY "+pgx.Identifier{name}.Sanitize()+"; DROP ROLE IF EXISTS "+pgx.Identifier{name}.Sanitize(), pgx.QueryExecModeSimpleProtocol)
	})
	return name
}

func roleExists(t *testing.T, e *postgres.Engine, name string) bool {
	t.Helper()
	ok, err := e.RoleExistsForTest(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func mint(t testing.TB, e *postgres.Engine, role string, fields map[string]string) (*engines.Pending, *engines.Secret) {
	t.Helper()
	ctx := context.Background()
	norm, err := e.ValidateRole(ctx, role, fields)
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.Prepare(ctx, engines.Role{Name: role, Fields: norm}, engines.MintRequest{Role: role, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.Create(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	return p, s
}

func TestMintLoginRevoke(t *testing.T) {
	for _, a := range admins {
		t.Run(a.name, func(t *testing.T) { testMintLoginRevoke(t, a) })
	}
}

func testMintLoginRevoke(t *testing.T, a admin) {
	ctx := context.Background()
	e, dsn, superDSN := newEngineAs(t, a)
	// A schema of the admin's own: a least-privilege admin cannot let a
	// role create in public (owned by the database owner).
	if err := e.ExecForTest(ctx, `CREATE SCHEMA app; CREATE TABLE app.items (id int); INSERT INTO app.items VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	p, s := mint(t, e, "readonly", map[string]string{
		postgres.KeyCreation: postgres.DefaultCreation + ` GRANT USAGE, CREATE ON SCHEMA app TO {{name}}; GRANT SELECT ON app.items TO {{name}};
CREATE TABLE app.{{name}} (x int); ALTER TABLE app.{{name}} OWNER TO {{name}};`,
	})
	user, pw := s.Data["username"], s.Data["password"]
	if !strings.HasPrefix(user, "sigil_readonly_") || len(pw) != 64 {
		t.Fatalf("username %q, password length %d", user, len(pw))
	}
	if strings.Contains(string(p.Revocation), pw) {
		t.Fatal("password in revocation data")
	}
	if err := login(ctx, dsn, user, pw); err != nil {
		t.Fatalf("login with minted password: %v", err)
	}
	if err := login(ctx, dsn, user, "wrong"); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	// The stored secret is the verifier Sigil computed, not a server hash.
	var stored string
	queryAs(t, superDSN, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, []any{user}, &stored)
	if !strings.HasPrefix(stored, "SCRAM-SHA-256$4096:") {
		t.Fatalf("stored %q", stored)
	}
	// A session open at revocation time is terminated.
	cfg, _ := pgx.ParseConfig(dsn)
	cfg.User, cfg.Password = user, pw
	held, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)

	if err := e.Renew(ctx, p.Revocation, time.Now().Add(2*time.Hour)); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if err := e.Revoke(ctx, p.Revocation); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if roleExists(t, e, user) {
		t.Fatal("role survives revoke")
	}
	if err := login(ctx, dsn, user, pw); err == nil {
		t.Fatal("login after revoke succeeded")
	}
	if err := held.Ping(ctx); err == nil {
		t.Error("session survived revocation")
	}
	// Idempotent: again, and for a role dropped by hand.
	if err := e.Revoke(ctx, p.Revocation); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	p2, s2 := mint(t, e, "readonly", nil)
	if err := e.ExecForTest(ctx, "DROP ROLE "+pgx.Identifier{s2.Data["username"]}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	if err := e.Revoke(ctx, p2.Revocation); err != nil {
		t.Fatalf("revoke of a role dropped by hand: %v", err)
	}
}

// TestVerifierMatchesServer checks the verifier format against the server:
// PostgreSQL hashes a plain password with a salt; the same salt through
// scramVerifierSalt must give the same string.
func TestVerifierMatchesServer(t *testing.T) {
	ctx := context.Background()
	e, dsn := newEngine(t)
	// Roles are cluster-wide and the cluster is shared: unique names.
	plain, pre := uniq(t, e, "plain"), uniq(t, e, "pre")
	if err := e.ExecForTest(ctx, `SET password_encryption = 'scram-sha-256'; CREATE ROLE `+pgx.Identifier{plain}.Sanitize()+` LOGIN PASSWORD 'correct horse'`); err != nil {
		t.Fatal(err)
	}
	var stored string
	if err := e.PoolForTest().QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, plain).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	// SCRAM-SHA-256$4096:SALT$...
	saltB64 := strings.SplitN(strings.SplitN(stored, ":", 2)[1], "$", 2)[0]
	salt, err := base64.StdEncoding.DecodeString(saltB64)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := postgres.SCRAMVerifierSaltForTest("correct horse", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if mine != stored {
		t.Fatalf("verifier\n got %s\nwant %s", mine, stored)
	}
	// And a role created with a precomputed verifier logs in over SCRAM.
	v, _ := postgres.SCRAMVerifierForTest("battery staple", 4096)
	if err := e.ExecForTest(ctx, "CREATE ROLE "+pgx.Identifier{pre}.Sanitize()+" LOGIN PASSWORD "+postgres.QuoteLiteralForTest(v)); err != nil {
		t.Fatal(err)
	}
	if err := login(ctx, dsn, pre, "battery staple"); err != nil {
		t.Fatalf("login with precomputed verifier: %v", err)
	}
}

func TestLowIterationVerifierLogin(t *testing.T) {
	ctx := context.Background()
	e, dsn := newEngine(t)
	if _, err := e.Configure(ctx, map[string]string{postgres.KeyConnectionURL: dsn, postgres.KeySCRAMIterations: "16"}); err != nil {
		t.Fatal(err)
	}
	p, s := mint(t, e, "fast", nil)
	var stored string
	if err := e.PoolForTest().QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, s.Data["username"]).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, "SCRAM-SHA-256$16:") {
		t.Fatalf("stored %q", stored)
	}
	if err := login(ctx, dsn, s.Data["username"], s.Data["password"]); err != nil {
		t.Fatal(err)
	}
	if err := e.Revoke(ctx, p.Revocation); err != nil {
		t.Fatal(err)
	}
}

// Hostile text in templates and names stays data: quoted as an identifier
// or a literal, never executed.
func TestHostileNamesAreQuoted(t *testing.T) {
	for _, a := range admins {
		t.Run(a.name, func(t *testing.T) { testHostileNamesAreQuoted(t, a) })
	}
}

func testHostileNamesAreQuoted(t *testing.T, a admin) {
	ctx := context.Background()
	e, dsn, _ := newEngineAs(t, a)
	if err := e.ExecForTest(ctx, `CREATE TABLE canary (id int)`); err != nil {
		t.Fatal(err)
	}
	hostile := []string{
		`x"; DROP TABLE canary; --`,
		`a'b'); DROP TABLE canary; --`,
		`back\slash' OR '1'='1`,
		"Ω\"\"''{{name}}",
	}
	for _, h := range hostile {
		p, s := mint(t, e, h, map[string]string{postgres.KeyUsernameTemplate: "{{role}}_{{random}}"})
		user := s.Data["username"]
		if len(user) > 63 {
			t.Errorf("username of %d bytes", len(user))
		}
		if !roleExists(t, e, user) {
			t.Fatalf("role %q not created under its exact name", user)
		}
		if err := login(ctx, dsn, user, s.Data["password"]); err != nil {
			t.Errorf("login as %q: %v", user, err)
		}
		if err := e.Revoke(ctx, p.Revocation); err != nil {
			t.Fatalf("revoke %q: %v", user, err)
		}
		if roleExists(t, e, user) {
			t.Errorf("role %q survives", user)
		}
	}
	var n int
	if err := e.PoolForTest().QueryRow(ctx, `SELECT count(*) FROM canary`).Scan(&n); err != nil {
		t.Fatalf("canary table damaged: %v", err)
	}
}

func TestUsernameTemplate(t *testing.T) {
	now := time.Unix(1700000000, 0)
	long := strings.Repeat("r", 100)
	u := postgres.UsernameForTest(postgres.DefaultUsernameTemplate, long, now)
	if len(u) != 63 || !strings.HasPrefix(u, "sigil_rrr") {
		t.Fatalf("long role: %q (%d)", u, len(u))
	}
	// The random part survives the cut.
	if u2 := postgres.UsernameForTest(postgres.DefaultUsernameTemplate, long, now); u2 == u {
		t.Error("two usernames equal: random part was cut")
	}
	if u := postgres.UsernameForTest("{{role}}_{{unix_time}}_{{random}}", "ro", now); !strings.HasPrefix(u, "ro_1700000000_") {
		t.Errorf("%q", u)
	}
	if got := postgres.CutForTest("aaΩ", 3); got != "aa" {
		t.Errorf("cut split a rune: %q", got)
	}
	if got := postgres.QuoteLiteralForTest(`a'b\c`); got != `E'a''b\\c'` {
		t.Errorf("quoteLiteral = %s", got)
	}
}

func TestValidation(t *testing.T) {
	ctx := context.Background()
	e := newBare()
	bad := []map[string]string{
		{postgres.KeyDefaultTTL: "x"},
		{postgres.KeyDefaultTTL: "2h", postgres.KeyMaxTTL: "1h"},
		{postgres.KeyUsernameTemplate: "fixed"},
		{postgres.KeyCreation: "CREATE ROLE foo"},
		{postgres.KeyRevocation: "DROP ROLE {{nam}}"},
		{"unknown": "1"},
	}
	for _, f := range bad {
		if _, err := e.ValidateRole(ctx, "r", f); !errors.Is(err, engines.ErrInvalidConfig) {
			t.Errorf("%v: %v", f, err)
		}
	}
	if _, err := e.Configure(ctx, map[string]string{}); !errors.Is(err, engines.ErrInvalidConfig) {
		t.Errorf("empty config: %v", err)
	}
	if _, err := e.Configure(ctx, map[string]string{postgres.KeyConnectionURL: "postgres://x", postgres.KeyMaxOpenConnections: "0"}); !errors.Is(err, engines.ErrInvalidConfig) {
		t.Errorf("bad max_open: %v", err)
	}
	if _, err := e.Create(ctx, &engines.Pending{}); !errors.Is(err, engines.ErrInvalidRequest) {
		t.Errorf("create unprepared: %v", err)
	}
	r := e.RedactConfig(map[string]string{postgres.KeyConnectionURL: "postgres://u:secretpw@h/db"})
	if strings.Contains(r[postgres.KeyConnectionURL], "secretpw") {
		t.Errorf("redacted %q", r[postgres.KeyConnectionURL])
	}
	p, err := e.Prepare(ctx, engines.Role{Name: "r", Fields: map[string]string{postgres.KeyDefaultTTL: "1h", postgres.KeyMaxTTL: "2h"}},
		engines.MintRequest{TTL: 5 * time.Hour, Now: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if p.ExpiresAt != time.Unix(0, 0).Add(2*time.Hour) {
		t.Errorf("TTL not capped: %v", p.ExpiresAt)
	}
}

func TestRotateRoot(t *testing.T) {
	ctx := context.Background()
	e, dsn := newEngine(t)
	// Rotate a dedicated admin, not the cluster's superuser other tests use.
	admin := uniq(t, e, "admin")
	if err := e.ExecForTest(ctx, `CREATE ROLE `+pgx.Identifier{admin}.Sanitize()+` LOGIN CREATEROLE SUPERUSER PASSWORD 'initial'`); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(dsn)
	u.User = url.UserPassword(admin, "initial")
	if _, err := e.Configure(ctx, map[string]string{postgres.KeyConnectionURL: u.String()}); err != nil {
		t.Fatal(err)
	}
	cfg, err := e.RotateRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nu, _ := url.Parse(cfg[postgres.KeyConnectionURL])
	npw, _ := nu.User.Password()
	if npw == "initial" || len(npw) != 64 {
		t.Fatalf("new password %d chars", len(npw))
	}
	if err := login(ctx, dsn, admin, "initial"); err == nil {
		t.Error("old root password still works")
	}
	if err := login(ctx, dsn, admin, npw); err != nil {
		t.Errorf("new root password: %v", err)
	}
	// The engine works on with the new credential.
	p, _ := mint(t, e, "after", nil)
	if err := e.Revoke(ctx, p.Revocation); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkMintRevoke compares the engine's create+revoke (with the
// default, thorough revocation statements and a precomputed verifier) with
// raw CREATE ROLE … PASSWORD + DROP ROLE on the same database, serially and
// with 8 concurrent clients.
func BenchmarkMintRevoke(b *testing.B) {
	ctx := context.Background()
	e, _ := newEngine(b)
	norm, _ := e.ValidateRole(ctx, "bench", nil)
	role := engines.Role{Name: "bench", Fields: norm}
	// The same engine with a bare DROP ROLE as revocation isolates the
	// effect of the precomputed verifier from the thorough default revocation.
	norm2, _ := e.ValidateRole(ctx, "bench", map[string]string{postgres.KeyRevocation: "DROP ROLE IF EXISTS {{name}};"})
	bare := engines.Role{Name: "bench", Fields: norm2}
	// A second engine on the same database with cheap verifiers.
	low, dsn := newBare(), e.ConfigForTest()[postgres.KeyConnectionURL]
	if _, err := low.Configure(ctx, map[string]string{postgres.KeyConnectionURL: dsn, postgres.KeyMaxOpenConnections: "8", postgres.KeySCRAMIterations: "16"}); err != nil {
		b.Fatal(err)
	}
	defer low.Close()
	var seq atomic.Int64
	for _, par := range []int{1, 8} {
		for _, v := range []struct {
			name string
			e    *postgres.Engine
			role engines.Role
		}{{"engine", e, role}, {"engine-bare-drop", e, bare}, {"engine-iter16", low, role}} {
			b.Run(fmt.Sprintf("%s/clients=%d", v.name, par), func(b *testing.B) {
				run(b, par, func() error {
					p, err := v.e.Prepare(ctx, v.role, engines.MintRequest{Now: time.Now()})
					if err != nil {
						return err
					}
					if _, err := v.e.Create(ctx, p); err != nil {
						return err
					}
					return v.e.Revoke(ctx, p.Revocation)
				})
			})
		}
		b.Run(fmt.Sprintf("raw/clients=%d", par), func(b *testing.B) {
			run(b, par, func() error {
				name := pgx.Identifier{fmt.Sprintf("raw_%d", seq.Add(1))}.Sanitize()
				if err := e.ExecForTest(ctx, "CREATE ROLE "+name+" LOGIN PASSWORD 'p4ssw0rd-raw-benchmark' VALID UNTIL 'infinity'"); err != nil {
					return err
				}
				return e.ExecForTest(ctx, "DROP ROLE "+name)
			})
		})
	}
}

func BenchmarkSCRAMVerifier(b *testing.B) {
	for b.Loop() {
		if _, err := postgres.SCRAMVerifierForTest("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", postgres.DefaultSCRAMIterations); err != nil {
			b.Fatal(err)
		}
	}
}

func run(b *testing.B, par int, op func() error) {
	b.Helper()
	b.ResetTimer()
	b.SetParallelism(max(par/runtime.GOMAXPROCS(0), 1))
	if par == 1 {
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}
