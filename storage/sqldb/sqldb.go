// Package sqldb implements Sigil's storage repositories once, in SQL that
// runs on both SQLite and PostgreSQL. The backend packages (storage/sqlite,
// storage/postgres) open the database, apply their migrations and supply a
// Dialect for the few places where the two differ: placeholders, time
// encoding, row locking in ClaimDue and the unique-violation error.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// Dialect captures what differs between backends.
type Dialect interface {
	// Name is the backend name Store.Backend reports.
	Name() string
	// DollarPlaceholders reports whether parameters are written $1, $2, …
	// (PostgreSQL) rather than ? (SQLite).
	DollarPlaceholders() bool
	// Time encodes a time for a query parameter; the zero time must encode
	// as nil (SQL NULL). Decoding accepts int64 microseconds or time.Time.
	Time(t time.Time) any
	// LockSkipLocked is appended to the row-selecting subquery of ClaimDue
	// (" FOR UPDATE SKIP LOCKED" on PostgreSQL; empty where writes are
	// serialised anyway).
	LockSkipLocked() string
	// IsUniqueViolation reports whether err is a unique or primary-key
	// constraint violation.
	IsUniqueViolation(err error) bool
	// SerializeWrites reports whether the database admits one writer at a
	// time (SQLite): the Store then queues writers in process.
	SerializeWrites() bool
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Store is a storage.Store over a database/sql handle.
type Store struct {
	db     *sql.DB
	d      Dialect
	logger *slog.Logger
	gate   chan struct{} // write gate (capacity 1) when SerializeWrites
	stmts  *stmtCache    // nil unless the dialect reuses statements
	repos
}

var _ storage.Store = (*Store)(nil)

// New wraps an open, migrated database. The Store owns db: Close closes it.
func New(db *sql.DB, d Dialect, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{db: db, d: d, logger: logger}
	if d.SerializeWrites() {
		s.gate = make(chan struct{}, 1)
	}
	if sr, ok := d.(StatementReuser); ok && sr.ReuseStatements() {
		s.stmts = newStmtCache(db)
	}
	s.repos = repos{s: s, q: db}
	return s
}

// DB returns the underlying handle (for tests and diagnostics).
func (s *Store) DB() *sql.DB { return s.db }

// Backend names the backend.
func (s *Store) Backend() string { return s.d.Name() }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("%s: ping: %w", s.d.Name(), err)
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error {
	if s.stmts != nil {
		s.stmts.close()
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("%s: close: %w", s.d.Name(), err)
	}
	return nil
}

// InTx runs fn in one transaction, committing if it returns nil and rolling
// back if it returns an error or panics (the panic is then re-raised).
func (s *Store) InTx(ctx context.Context, fn func(tx storage.Repos) error) (err error) {
	if err := s.acquire(ctx); err != nil {
		return err
	}
	defer s.release()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", s.d.Name(), err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		// Rollback errors are secondary to the error or panic that got us
		// here; the connection is discarded by database/sql if it is broken.
		_ = tx.Rollback()
	}()
	if err := fn(repos{s: s, q: tx, inTx: true}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		committed = true // nothing left to roll back
		return fmt.Errorf("%s: commit: %w", s.d.Name(), err)
	}
	committed = true
	return nil
}

// repos implements storage.Repos over a querier: the DB itself or a Tx.
type repos struct {
	s    *Store
	q    querier
	inTx bool
}

func (r repos) Certificates() storage.Certificates { return certs{r} }
func (r repos) Issuers() storage.Issuers           { return issuers{r} }
func (r repos) KeyBlobs() storage.KeyBlobs         { return keyBlobs{r} }
func (r repos) Keyring() storage.Keyring           { return keyring{r} }
func (r repos) Tokens() storage.Tokens             { return tokens{r} }
func (r repos) Mounts() storage.Mounts             { return mounts{r} }
func (r repos) Leases() storage.Leases             { return leases{r} }
func (r repos) Settings() storage.Settings         { return settings{r} }

// atomic runs fn in the surrounding transaction, or in a new one when the
// repositories are not bound to a transaction, so multi-statement writes
// are all-or-nothing either way.
func (r repos) atomic(ctx context.Context, fn func(r repos) error) error {
	if r.inTx {
		return fn(r)
	}
	return r.s.InTx(ctx, func(tx storage.Repos) error { return fn(tx.(repos)) })
}

// sql rewrites ? placeholders for the dialect. Queries in this package never
// contain a literal question mark.
func (r repos) sql(q string) string {
	if !r.s.d.DollarPlaceholders() {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

func (r repos) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	q = r.sql(q)
	if st := r.stmt(ctx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return r.q.ExecContext(ctx, q, args...)
}

func (r repos) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	q = r.sql(q)
	if st := r.stmt(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return r.q.QueryContext(ctx, q, args...)
}

func (r repos) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	q = r.sql(q)
	if st := r.stmt(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return r.q.QueryRowContext(ctx, q, args...)
}

func (r repos) t(t time.Time) any { return r.s.d.Time(t) }

// wrap adds context to err and maps driver errors onto the storage
// sentinels: no rows to ErrNotFound, unique violations to ErrConflict.
func (r repos) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%s: %w", op, storage.ErrNotFound)
	case r.s.d.IsUniqueViolation(err):
		// The driver's message quotes the key, which may be a token hash.
		return fmt.Errorf("%s: %w", op, storage.ErrConflict)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}

// execOne runs q, a statement on one row found by its key (a DELETE, or an
// UPDATE whose WHERE may also test the row's state): ErrNotFound if it
// changed none.
func (r repos) execOne(ctx context.Context, op, q string, args ...any) error {
	res, err := r.exec(ctx, q, args...)
	if err != nil {
		return r.wrap(op, err)
	}
	return affected(op, res)
}

// affected returns ErrNotFound (wrapped) when res changed no row.
func affected(op string, res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: rows affected: %w", op, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", op, storage.ErrNotFound)
	}
	return nil
}

// now is the default creation time: UTC, at the precision both backends keep.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// clampLimit applies the documented page-size defaults.
func clampLimit(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > 1000:
		return 1000
	}
	return n
}

// insert runs an INSERT that must add a row, returning ErrConflict when a
// unique key already holds one. ON CONFLICT DO NOTHING (rather than catching
// the violation) keeps a PostgreSQL transaction usable after the conflict,
// so callers inside InTx may branch on ErrConflict and carry on.
func (r repos) insert(ctx context.Context, op, q string, args ...any) error {
	res, err := r.exec(ctx, q+" ON CONFLICT DO NOTHING", args...)
	if err != nil {
		return r.wrap(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: rows affected: %w", op, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", op, storage.ErrConflict)
	}
	return nil
}
