// Package postgres is the "postgres" secret engine: it mints short-lived
// PostgreSQL login roles with 256-bit random passwords and drops them when
// their lease ends.
//
// Every value that reaches SQL is quoted, never spliced raw: the role name
// as an identifier (pgx.Identifier.Sanitize), the password verifier and the
// expiry as string literals. Statements run over the simple protocol because
// utility statements such as CREATE ROLE take no bind parameters.
//
// The engine holds no global lock: creations and revocations run in
// parallel up to max_open_connections.
//
// A create's outcome is made as certain as PostgreSQL allows: the creation
// statements run in their own transaction, each statement bounded by a
// server-side statement_timeout that ends them all by the caller's
// deadline, so a create the client gave up on (or whose Sigil died) cannot
// commit after the lease's pending window. An error PostgreSQL reports
// means the transaction rolled back (certain failure); a lost connection or
// a deadline means the outcome is unknown (engines.ErrOutcomeUnknown).
//
// The admin need not be a superuser: a CREATEROLE role works (PostgreSQL
// 15's least privilege). Such an admin has no rights over the roles it
// creates beyond dropping them, so the engine grants each new role to the
// admin in the creating transaction, which lets the default revocation
// terminate its sessions and reassign and drop what it owns. Revocation
// runs its statements as one transaction first and, if that fails, one by
// one, so an optional step that fails (terminating sessions, reassigning)
// cannot roll back NOLOGIN or DROP ROLE; it succeeds once the role is gone.
package postgres

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/errs"
)

// Type is the engine type name.
const Type = "postgres"

// Configuration and role keys.
const (
	KeyConnectionURL      = "connection_url"
	KeyMaxOpenConnections = "max_open_connections"
	KeySCRAMIterations    = "scram_iterations"

	KeyCreation         = "creation_statements"
	KeyRevocation       = "revocation_statements"
	KeyRenew            = "renew_statements"
	KeyDefaultTTL       = "default_ttl"
	KeyMaxTTL           = "max_ttl"
	KeyUsernameTemplate = "username_template"
)

// Defaults. Statements are templates: {{name}} is the role as a quoted
// identifier, {{name_literal}} the role as a quoted string literal,
// {{password}} the password (as a SCRAM verifier) and {{expiration}} the
// expiry (timestamptz), both quoted literals.
const (
	DefaultCreation   = `CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};`
	DefaultRevocation = `ALTER ROLE {{name}} NOLOGIN;
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {{name_literal}} AND pid <> pg_backend_pid();
REASSIGN OWNED BY {{name}} TO CURRENT_USER;
DROP OWNED BY {{name}};
DROP ROLE IF EXISTS {{name}};`
	DefaultRenew            = `ALTER ROLE {{name}} VALID UNTIL {{expiration}};`
	DefaultUsernameTemplate = `sigil_{{role}}_{{random}}`
	DefaultTTL              = time.Hour
	DefaultMaxTTL           = 24 * time.Hour
	DefaultMaxOpen          = 4

	// maxIdentifier is PostgreSQL's NAMEDATALEN-1.
	maxIdentifier = 63
	// DefaultSCRAMIterations is the SCRAM-SHA-256 iteration count of the
	// verifiers Sigil computes unless scram_iterations says otherwise
	// (PostgreSQL's own default, RFC 7677's recommended minimum).
	DefaultSCRAMIterations = 4096
)

// Register adds the engine type to a registry.
func Register(r *engines.Registry) error { return r.Register(Type, Factory) }

// Factory builds an unconfigured engine.
func Factory(env engines.Env) (engines.Engine, error) {
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	return &Engine{log: env.Logger, mount: env.Mount}, nil
}

// Engine is one mounted postgres engine.
type Engine struct {
	log   *slog.Logger
	mount string

	mu    sync.RWMutex
	pool  *pgxpool.Pool
	cfg   map[string]string
	super bool // the admin is a superuser: no grant of new roles needed
}

var _ engines.Leased = (*Engine)(nil)
var _ engines.RootRotator = (*Engine)(nil)
var _ engines.ConfigRedactor = (*Engine)(nil)

func (e *Engine) getPool() (*pgxpool.Pool, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.pool == nil {
		return nil, engines.ErrNotConfigured
	}
	return e.pool, nil
}

// connect opens and pings a pool for cfg.
func connect(ctx context.Context, cfg map[string]string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg[KeyConnectionURL])
	if err != nil {
		// pgx errors may quote the URL, which holds the root password.
		return nil, fmt.Errorf("%w: %s is not a valid PostgreSQL URL", engines.ErrInvalidConfig, KeyConnectionURL)
	}
	n, _ := strconv.Atoi(cfg[KeyMaxOpenConnections])
	pc.MaxConns = int32(n)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, connectError(pc.ConnConfig.Password, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, connectError(pc.ConnConfig.Password, err)
	}
	return pool, nil
}

// connectError gives the operator the database's own reason, which the
// API shows (it was "internal error" before): the server refusing
// (unknown role, bad password, missing database: fix the configuration)
// is FailedPrecondition, an unreachable server Unavailable. pgx names
// host, user and database but never the password; it is masked anyway.
func connectError(password string, err error) error {
	msg := err.Error()
	if password != "" {
		msg = strings.ReplaceAll(msg, password, "REDACTED")
	}
	kind := errs.Unavailable
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		kind = errs.FailedPrecondition
	}
	return &errs.Error{Kind: kind, Msg: "postgres engine: connect: " + msg, Err: err}
}

// Configure validates cfg, connects with it and swaps it in.
func (e *Engine) Configure(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	norm := map[string]string{}
	for k, v := range cfg {
		switch k {
		case KeyConnectionURL:
			norm[k] = v
		case KeyMaxOpenConnections:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1000 {
				return nil, fmt.Errorf("%w: %s must be 1..1000", engines.ErrInvalidConfig, k)
			}
			norm[k] = strconv.Itoa(n)
		case KeySCRAMIterations:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1_000_000 {
				return nil, fmt.Errorf("%w: %s must be 1..1000000", engines.ErrInvalidConfig, k)
			}
			norm[k] = strconv.Itoa(n)
		default:
			return nil, fmt.Errorf("%w: unknown key %q", engines.ErrInvalidConfig, k)
		}
	}
	if norm[KeyConnectionURL] == "" {
		return nil, fmt.Errorf("%w: %s is required", engines.ErrInvalidConfig, KeyConnectionURL)
	}
	if norm[KeyMaxOpenConnections] == "" {
		norm[KeyMaxOpenConnections] = strconv.Itoa(DefaultMaxOpen)
	}
	if norm[KeySCRAMIterations] == "" {
		norm[KeySCRAMIterations] = strconv.Itoa(DefaultSCRAMIterations)
	}
	pool, err := connect(ctx, norm)
	if err != nil {
		return nil, err
	}
	super, err := checkPrivileges(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, err
	}
	e.swap(pool, norm, super)
	return maps.Clone(norm), nil
}

// checkPrivileges checks that the admin can do what the default statements
// need, and reports whether it is a superuser. A superuser can do it all.
// Otherwise it needs CREATEROLE; then a rehearsal in a transaction that is
// rolled back (create a role, grant it to the admin, revoke it as the
// default revocation does) finds what else is missing, naming the step.
func checkPrivileges(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	var user string
	var super, createRole bool
	err := pool.QueryRow(ctx, `SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user`).Scan(&user, &super, &createRole)
	if err != nil {
		return false, connectError("", err)
	}
	if super {
		return true, nil
	}
	if !createRole {
		return false, fmt.Errorf("%w: postgres engine: user %q may not create roles, which every credential needs (it lacks CREATEROLE): run ALTER ROLE %s CREATEROLE as a superuser, or configure a user that may",
			engines.ErrRejected, user, pgx.Identifier{user}.Sanitize())
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	probe := "sigil_probe_" + hex.EncodeToString(b[:])
	steps := []struct{ what, sql string }{
		{"create a role", "CREATE ROLE {{name}} NOLOGIN"},
		{"grant the new role to the admin", "GRANT {{name}} TO CURRENT_USER"},
		{"alter the role", "ALTER ROLE {{name}} NOLOGIN"},
		{"terminate the role's sessions", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {{name_literal}}"},
		{"reassign objects the role owns", "REASSIGN OWNED BY {{name}} TO CURRENT_USER"},
		{"drop objects the role owns", "DROP OWNED BY {{name}}"},
		{"drop the role", "DROP ROLE {{name}}"},
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("postgres engine: check privileges: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for _, st := range steps {
		if _, err := tx.Exec(ctx, render(st.sql, probe, "", time.Time{}), pgx.QueryExecModeSimpleProtocol); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				return false, fmt.Errorf("%w: postgres engine: the admin role %q cannot %s: %s (SQLSTATE %s); grant what is missing or use a superuser",
					engines.ErrRejected, user, st.what, pe.Message, pe.Code)
			}
			return false, fmt.Errorf("postgres engine: check privileges (%s): %w", st.what, err)
		}
	}
	return false, nil
}

// swap installs a pool; the old one closes once its borrowed connections
// come back (pgxpool.Close waits for them), off the caller's path.
func (e *Engine) swap(pool *pgxpool.Pool, cfg map[string]string, super bool) {
	e.mu.Lock()
	old := e.pool
	e.pool, e.cfg, e.super = pool, cfg, super
	e.mu.Unlock()
	if old != nil {
		go old.Close()
	}
}

// RedactConfig hides the password in connection_url.
func (e *Engine) RedactConfig(cfg map[string]string) map[string]string {
	if u, err := url.Parse(cfg[KeyConnectionURL]); err == nil && u.User != nil {
		cfg[KeyConnectionURL] = u.Redacted()
	} else if cfg[KeyConnectionURL] != "" {
		cfg[KeyConnectionURL] = "(redacted)"
	}
	return cfg
}

// Close closes the connection pool.
func (e *Engine) Close() error {
	e.mu.Lock()
	p := e.pool
	e.pool = nil
	e.mu.Unlock()
	if p != nil {
		p.Close()
	}
	return nil
}

// role is a parsed role definition.
type role struct {
	creation, revocation, renew string
	defaultTTL, maxTTL          time.Duration
	usernameTemplate            string
}

var knownPlaceholders = []string{"{{name}}", "{{name_literal}}", "{{password}}", "{{expiration}}"}

func checkTemplate(key, s string) error {
	rest := s
	for _, p := range knownPlaceholders {
		rest = strings.ReplaceAll(rest, p, "")
	}
	if strings.Contains(rest, "{{") {
		return fmt.Errorf("%w: %s has an unknown {{placeholder}}", engines.ErrInvalidConfig, key)
	}
	return nil
}

func parseRole(f map[string]string) (*role, error) {
	r := &role{
		creation: f[KeyCreation], revocation: f[KeyRevocation], renew: f[KeyRenew],
		defaultTTL: DefaultTTL, maxTTL: DefaultMaxTTL, usernameTemplate: f[KeyUsernameTemplate],
	}
	if r.creation == "" {
		r.creation = DefaultCreation
	}
	if r.revocation == "" {
		r.revocation = DefaultRevocation
	}
	if r.renew == "" {
		r.renew = DefaultRenew
	}
	if r.usernameTemplate == "" {
		r.usernameTemplate = DefaultUsernameTemplate
	}
	for k, v := range f {
		switch k {
		case KeyCreation, KeyRevocation, KeyRenew:
			if err := checkTemplate(k, v); err != nil {
				return nil, err
			}
		case KeyDefaultTTL, KeyMaxTTL:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%w: %s must be a positive duration", engines.ErrInvalidConfig, k)
			}
			if k == KeyDefaultTTL {
				r.defaultTTL = d
			} else {
				r.maxTTL = d
			}
		case KeyUsernameTemplate:
			if !strings.Contains(v, "{{random}}") {
				return nil, fmt.Errorf("%w: %s must contain {{random}}", engines.ErrInvalidConfig, k)
			}
		default:
			return nil, fmt.Errorf("%w: unknown role key %q", engines.ErrInvalidConfig, k)
		}
	}
	if !strings.Contains(r.creation, "{{name}}") {
		return nil, fmt.Errorf("%w: %s must use {{name}}", engines.ErrInvalidConfig, KeyCreation)
	}
	if r.defaultTTL > r.maxTTL {
		return nil, fmt.Errorf("%w: default_ttl exceeds max_ttl", engines.ErrInvalidConfig)
	}
	return r, nil
}

// ValidateRole checks a role and fills its defaults, so a later change of
// Sigil's defaults does not silently change existing roles.
func (e *Engine) ValidateRole(_ context.Context, _ string, f map[string]string) (map[string]string, error) {
	r, err := parseRole(f)
	if err != nil {
		return nil, err
	}
	return map[string]string{
		KeyCreation: r.creation, KeyRevocation: r.revocation, KeyRenew: r.renew,
		KeyDefaultTTL: r.defaultTTL.String(), KeyMaxTTL: r.maxTTL.String(),
		KeyUsernameTemplate: r.usernameTemplate,
	}, nil
}

// revocation is what a lease records (sealed) to revoke or renew the role:
// the statements are copied from the role at mint time, so editing or
// deleting the role later never strands existing credentials.
type revocation struct {
	Username   string `json:"username"`
	Revocation string `json:"revocation_statements"`
	Renew      string `json:"renew_statements"`
}

// private is the in-memory half of a prepared secret.
type private struct {
	username, password, verifier, creation string
	expires                                time.Time
}

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// username renders the username template: {{role}}, {{random}} (16
// characters, 80 random bits) and {{unix_time}}. If the result is longer
// than PostgreSQL's 63-byte limit it shortens the role part first, so the
// random part survives, then cuts at a character boundary.
func username(tmpl, roleName string, now time.Time) string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	random := lowerBase32.EncodeToString(b[:])
	render := func(r string) string {
		return strings.NewReplacer("{{role}}", r, "{{random}}", random,
			"{{unix_time}}", strconv.FormatInt(now.Unix(), 10)).Replace(tmpl)
	}
	name := strings.ReplaceAll(render(roleName), "\x00", "")
	if over := len(name) - maxIdentifier; over > 0 && strings.Contains(tmpl, "{{role}}") {
		name = strings.ReplaceAll(render(cut(roleName, max(len(roleName)-over, 0))), "\x00", "")
	}
	return cut(name, maxIdentifier)
}

// cut shortens s to at most n bytes without splitting a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// iterations returns the configured SCRAM iteration count.
func (e *Engine) iterations() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if n, err := strconv.Atoi(e.cfg[KeySCRAMIterations]); err == nil && n > 0 {
		return n
	}
	return DefaultSCRAMIterations
}

// Prepare decides the username, password and expiry; it touches nothing.
func (e *Engine) Prepare(_ context.Context, r engines.Role, req engines.MintRequest) (*engines.Pending, error) {
	ro, err := parseRole(r.Fields)
	if err != nil {
		return nil, err
	}
	ttl := ro.defaultTTL
	if req.TTL > 0 {
		ttl = req.TTL
	}
	ttl = min(ttl, ro.maxTTL)
	var pw [32]byte
	_, _ = rand.Read(pw[:])
	password := hex.EncodeToString(pw[:])
	verifier, err := scramVerifier(password, e.iterations())
	if err != nil {
		return nil, err
	}
	name := username(ro.usernameTemplate, r.Name, req.Now)
	rev, err := json.Marshal(revocation{Username: name, Revocation: ro.revocation, Renew: ro.renew})
	if err != nil {
		return nil, err
	}
	exp := req.Now.Add(ttl)
	return &engines.Pending{
		Revocation: rev, ExpiresAt: exp, MaxExpiresAt: req.Now.Add(ro.maxTTL), Renewable: true,
		Private: &private{username: name, password: password, verifier: verifier, creation: ro.creation, expires: exp},
	}, nil
}

// scramVerifier computes a SCRAM-SHA-256 verifier (RFC 5802 §3, RFC 7677)
// in PostgreSQL's storage format
//
//	SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
//
// with a 128-bit random salt. PostgreSQL stores a PASSWORD that already has
// this form as is instead of hashing the password itself; hashing is most of
// the cost of CREATE ROLE on the server (≈150 roles/s with a password
// against ≈1,300/s without, on one connection). Precomputing moves that
// cost from the database every application shares onto Sigil, which scales
// out.
//
// Measured on PostgreSQL 15: the server still runs the verifier's full
// iteration count once per CREATE ROLE, because it checks that the verifier
// does not encode the empty password (plain_crypt_verify against ""). At
// 4096 iterations a precomputed verifier therefore saves the server nothing
// (≈3.5 ms per CREATE ROLE either way); at 16 iterations CREATE ROLE costs
// ≈0.2 ms. A low count is safe here, and only here: iterations slow down
// guessing of a stolen verifier, and a 256-bit random password (hex, which
// SASLprep leaves unchanged) cannot be guessed at any count. The default
// stays 4096 (PostgreSQL's default and RFC 7677's recommended minimum) for
// clients that refuse lower counts; scram_iterations lowers it per mount.
// Logins cost the client the same iterations, another reason to lower it.
func scramVerifier(password string, iter int) (string, error) {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	return scramVerifierSalt(password, salt, iter)
}

func scramVerifierSalt(password string, salt []byte, iter int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("postgres engine: scram: %w", err)
	}
	defer clear(salted)
	mac := func(msg string) []byte {
		h := hmac.New(sha256.New, salted)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac("Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := mac("Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

// quoteLiteral quotes s as a PostgreSQL string literal that means s under
// either setting of standard_conforming_strings (the E'…' form when s holds
// a backslash). NUL cannot appear in PostgreSQL text and is dropped.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}

// render fills a statement template in one pass (a value containing
// "{{name}}" is not expanded again), with every value quoted.
func render(tmpl, name, password string, expires time.Time) string {
	exp := ""
	if !expires.IsZero() {
		exp = quoteLiteral(expires.UTC().Format(time.RFC3339Nano))
	}
	return strings.NewReplacer(
		"{{name}}", pgx.Identifier{name}.Sanitize(),
		"{{name_literal}}", quoteLiteral(name),
		"{{password}}", quoteLiteral(password),
		"{{expiration}}", exp,
	).Replace(tmpl)
}

// exec runs rendered statements in one simple-protocol round trip: several
// statements in one query string run as one implicit transaction, so a
// failure leaves nothing half done. Errors never include the SQL, which
// carries the verifier.
func (e *Engine) exec(ctx context.Context, sql string) error {
	pool, err := e.getPool()
	if err != nil {
		return err
	}
	_, err = pool.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	return classify(ctx, err)
}

// classify marks err for the lease manager: a refusal that retrying cannot
// fix (privileges, syntax, a name taken) wraps engines.ErrRejected; anything
// but an error PostgreSQL reported (a lost connection, the deadline) wraps
// engines.ErrOutcomeUnknown, since the statements may have run. An error
// PostgreSQL reported means its transaction rolled back.
func classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return fmt.Errorf("%w: %w", engines.ErrOutcomeUnknown, err)
	}
	switch pe.Code[:2] {
	case "42", // syntax error or access rule violation (permission denied)
		"22", // data exception
		"23", // integrity constraint violation
		"0L", // invalid grantor
		"0P", // invalid role specification
		"2B", // dependent objects still exist
		"28": // invalid authorization specification
		return fmt.Errorf("%w: %w", engines.ErrRejected, err)
	}
	return err
}

// minStatementTimeout is the floor of a create's per-statement timeout, so
// a deadline almost passed still gets a try rather than an unbounded one
// (0 would disable the timeout).
const minStatementTimeout = time.Millisecond

// Create runs the creation statements, and for an admin that is not a
// superuser the grant of the new role to the admin, in one transaction on
// one connection. Each statement gets statement_timeout = what is left of
// ctx's deadline divided by the number of statements, so PostgreSQL ends
// the transaction by the deadline even if this process is gone.
func (e *Engine) Create(ctx context.Context, p *engines.Pending) (*engines.Secret, error) {
	pr, ok := p.Private.(*private)
	if !ok {
		return nil, fmt.Errorf("%w: not a prepared postgres secret", engines.ErrInvalidRequest)
	}
	pool, err := e.getPool()
	if err != nil {
		return nil, err
	}
	e.mu.RLock()
	super := e.super
	e.mu.RUnlock()
	stmts := splitStatements(render(pr.creation, pr.username, pr.verifier, pr.expires))
	if !super {
		// Right after the CREATE ROLE, so later creation statements (ALTER
		// … OWNER TO the new role) may rely on it too.
		at := len(stmts)
		for i, st := range stmts {
			if u := strings.ToUpper(st); strings.HasPrefix(u, "CREATE ROLE") || strings.HasPrefix(u, "CREATE USER") {
				at = i + 1
				break
			}
		}
		stmts = slices.Insert(stmts, at, "GRANT "+pgx.Identifier{pr.username}.Sanitize()+" TO CURRENT_USER")
	}
	n := len(stmts)
	body := strings.Join(stmts, ";\n")
	conn, err := pool.Acquire(ctx)
	if err != nil {
		// Nothing was sent: a certain failure.
		return nil, fmt.Errorf("postgres engine: create role %s: %w", pr.username, err)
	}
	defer conn.Release()
	q := "BEGIN;\n"
	if dl, ok := ctx.Deadline(); ok {
		per := max(time.Until(dl)/time.Duration(max(n, 1)), minStatementTimeout)
		q += fmt.Sprintf("SET LOCAL statement_timeout = %d;\n", per.Milliseconds()+1)
	}
	q += body + ";\nCOMMIT"
	_, err = conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			// The failed statement left the transaction aborted: end it so
			// the connection goes back to the pool clean.
			_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK", pgx.QueryExecModeSimpleProtocol)
		}
		return nil, fmt.Errorf("postgres engine: create role %s: %w", pr.username, classify(ctx, err))
	}
	return &engines.Secret{Data: map[string]string{"username": pr.username, "password": pr.password}}, nil
}

func parseRevocation(b []byte) (*revocation, error) {
	var r revocation
	if err := json.Unmarshal(b, &r); err != nil || r.Username == "" {
		return nil, fmt.Errorf("%w: bad revocation data", engines.ErrInvalidRequest)
	}
	return &r, nil
}

func (e *Engine) roleExists(ctx context.Context, name string) (bool, error) {
	exists, _, err := e.roleState(ctx, name)
	return exists, err
}

// roleState reports whether role name exists and whether the admin has its
// privileges (is a superuser, or a member that inherits).
func (e *Engine) roleState(ctx context.Context, name string) (exists, held bool, err error) {
	pool, err := e.getPool()
	if err != nil {
		return false, false, err
	}
	err = pool.QueryRow(ctx, `SELECT pg_has_role(current_user, oid, 'USAGE') FROM pg_roles WHERE rolname = $1`, name).Scan(&held)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, nil
	}
	if err != nil {
		return false, false, classify(ctx, err)
	}
	return true, held, nil
}

// Renew moves the role's VALID UNTIL.
func (e *Engine) Renew(ctx context.Context, rev []byte, expiresAt time.Time) error {
	r, err := parseRevocation(rev)
	if err != nil {
		return err
	}
	stmts := r.Renew
	if stmts == "" {
		stmts = DefaultRenew
	}
	if err := e.exec(ctx, render(stmts, r.Username, "", expiresAt)); err != nil {
		return fmt.Errorf("postgres engine: renew role %s: %w", r.Username, err)
	}
	return nil
}

// Revoke runs the revocation statements. A role that does not exist (never
// created, or dropped by hand) is already revoked. The statements run as
// one transaction; if that fails they run again one by one, each on its
// own, and the revocation succeeds if the role is gone at the end: a
// failing optional step (terminating sessions, reassigning objects) then
// no longer rolls back NOLOGIN and DROP ROLE.
func (e *Engine) Revoke(ctx context.Context, rev []byte) error {
	r, err := parseRevocation(rev)
	if err != nil {
		return err
	}
	exists, held, err := e.roleState(ctx, r.Username)
	if err != nil {
		return fmt.Errorf("postgres engine: revoke role %s: %w", r.Username, err)
	}
	if !exists {
		return nil
	}
	if !held {
		// A role created before Sigil granted new roles to a non-superuser
		// admin: without its privileges the default statements cannot
		// terminate its sessions or reassign what it owns.
		if err := e.exec(ctx, "GRANT "+pgx.Identifier{r.Username}.Sanitize()+" TO CURRENT_USER"); err != nil {
			e.log.Warn("postgres engine: granting a role to the admin before revoking it", "role", r.Username, "error", err)
		}
	}
	stmts := r.Revocation
	if stmts == "" {
		stmts = DefaultRevocation
	}
	sql := render(stmts, r.Username, "", time.Time{})
	err = e.exec(ctx, sql)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("postgres engine: revoke role %s: %w", r.Username, err)
	}
	var failed []error
	for i, st := range splitStatements(sql) {
		if serr := e.exec(ctx, st); serr != nil {
			failed = append(failed, fmt.Errorf("statement %d: %w", i+1, serr))
			if ctx.Err() != nil {
				break
			}
		}
	}
	if ok, qerr := e.roleExists(ctx, r.Username); qerr == nil && !ok {
		if len(failed) > 0 {
			e.log.Warn("postgres engine: role dropped, but some revocation statements failed", "role", r.Username, "error", errors.Join(failed...))
		}
		return nil
	}
	if len(failed) == 0 {
		failed = append(failed, err)
	}
	return fmt.Errorf("postgres engine: revoke role %s: %w", r.Username, errors.Join(failed...))
}

// splitStatements splits SQL at top-level semicolons, outside quotes
// ('…', E'…', "…", $tag$…$tag$) and comments, dropping empty statements.
func splitStatements(sql string) []string {
	var out []string
	start := 0
	emit := func(end int) {
		if st := strings.TrimSpace(sql[start:end]); st != "" && !onlyComments(st) {
			out = append(out, st)
		}
	}
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == ';':
			emit(i)
			i++
			start = i
		case c == '\'':
			escapes := i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e') && (i < 2 || !isIdentChar(sql[i-2]))
			i = skipQuoted(sql, i, '\'', escapes)
		case c == '"':
			i = skipQuoted(sql, i, '"', false)
		case c == '-' && strings.HasPrefix(sql[i:], "--"):
			if j := strings.IndexByte(sql[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(sql)
			}
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			i = skipBlockComment(sql, i)
		case c == '$' && (i == 0 || !isIdentChar(sql[i-1])):
			i = skipDollarQuoted(sql, i)
		default:
			i++
		}
	}
	emit(len(sql))
	return out
}

func isIdentChar(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

// skipQuoted returns the index after the quote closing the one at i (a
// doubled quote is an escaped one; with escapes, so is a backslash pair).
func skipQuoted(s string, i int, q byte, escapes bool) int {
	for j := i + 1; j < len(s); j++ {
		switch {
		case escapes && s[j] == '\\':
			j++
		case s[j] == q && j+1 < len(s) && s[j+1] == q:
			j++
		case s[j] == q:
			return j + 1
		}
	}
	return len(s)
}

// skipBlockComment returns the index after the (nestable) /* */ comment
// starting at i.
func skipBlockComment(s string, i int) int {
	depth := 0
	for j := i; j < len(s)-1; j++ {
		switch {
		case s[j] == '/' && s[j+1] == '*':
			depth++
			j++
		case s[j] == '*' && s[j+1] == '/':
			depth--
			j++
			if depth == 0 {
				return j + 1
			}
		}
	}
	return len(s)
}

// skipDollarQuoted returns the index after the $tag$…$tag$ string at i, or
// i+1 if no dollar quote starts there (a positional parameter such as $1).
func skipDollarQuoted(s string, i int) int {
	j := i + 1
	for j < len(s) && s[j] != '$' && isIdentChar(s[j]) && !(j == i+1 && s[j] >= '0' && s[j] <= '9') {
		j++
	}
	if j >= len(s) || s[j] != '$' {
		return i + 1
	}
	tag := s[i : j+1]
	if k := strings.Index(s[j+1:], tag); k >= 0 {
		return j + 1 + k + len(tag)
	}
	return len(s)
}

// onlyComments reports whether st holds nothing but comments.
func onlyComments(st string) bool {
	for st != "" {
		st = strings.TrimSpace(st)
		switch {
		case strings.HasPrefix(st, "--"):
			j := strings.IndexByte(st, '\n')
			if j < 0 {
				return true
			}
			st = st[j+1:]
		case strings.HasPrefix(st, "/*"):
			st = st[skipBlockComment(st, 0):]
		default:
			return st == ""
		}
	}
	return true
}

// RotateRoot sets a new random password (as a SCRAM verifier) on the
// configured user, reconnects with it and returns the configuration to
// store. connection_url must be a URL (postgres://user:pw@host/db).
//
// If storing the returned configuration fails, the only copy of the new
// password is in this engine's pool, which keeps working until restart;
// the caller logs that loudly.
func (e *Engine) RotateRoot(ctx context.Context) (map[string]string, error) {
	e.mu.RLock()
	cfg := maps.Clone(e.cfg)
	e.mu.RUnlock()
	if cfg == nil {
		return nil, engines.ErrNotConfigured
	}
	u, err := url.Parse(cfg[KeyConnectionURL])
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.User == nil || u.User.Username() == "" {
		return nil, fmt.Errorf("%w: rotate-root needs connection_url as postgres://USER:PASSWORD@HOST/DB", engines.ErrInvalidConfig)
	}
	var pw [32]byte
	_, _ = rand.Read(pw[:])
	password := hex.EncodeToString(pw[:])
	verifier, err := scramVerifier(password, e.iterations())
	if err != nil {
		return nil, err
	}
	if err := e.exec(ctx, "ALTER ROLE CURRENT_USER WITH PASSWORD "+quoteLiteral(verifier)); err != nil {
		return nil, fmt.Errorf("postgres engine: rotate root: %w", err)
	}
	u.User = url.UserPassword(u.User.Username(), password)
	cfg[KeyConnectionURL] = u.String()
	pool, err := connect(ctx, cfg)
	if err != nil {
		// The password changed but the new one does not connect: return the
		// configuration anyway so it is stored (the old one is dead).
		return cfg, fmt.Errorf("postgres engine: rotate root: reconnect: %w", err)
	}
	e.mu.RLock()
	super := e.super
	e.mu.RUnlock()
	e.swap(pool, cfg, super)
	e.log.Info("postgres root credential rotated", "mount", e.mount)
	return maps.Clone(cfg), nil
}
