// Package sqlite opens Sigil's embedded storage: one SQLite database file
// (modernc.org/sqlite, pure Go) in WAL mode, migrated at Open, served by the
// shared SQL implementation in storage/sqldb.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/pressly/goose/v3"
	sqlite3 "modernc.org/sqlite"
	sqlite3lib "modernc.org/sqlite/lib"

	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqldb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// busyTimeout is how long a writer waits for the write lock before failing
// with SQLITE_BUSY. Writers queue on the lock instead of failing; the value
// only bounds a pathological wait.
const busyTimeout = 30 * time.Second

// checkpointEvery is how often a background goroutine copies the
// write-ahead log into the database file (a PASSIVE checkpoint: it never
// blocks writers or readers). SQLite's own automatic checkpoint runs inside
// the commit that crosses its threshold, so one transaction in ~1000 pages
// paid for copying them and an fsync while holding the store's write gate,
// and every writer queued behind it (the sign benchmark's p99).
const checkpointEvery = 250 * time.Millisecond

// autoCheckpointPages keeps SQLite's in-commit checkpoint only as a
// backstop, should the background one fall behind or fail.
const autoCheckpointPages = 8000

// maxConns bounds the pool. SQLite has one writer at a time anyway; a few
// connections let WAL readers proceed alongside it.
const maxConns = 8

// Option adjusts Open.
type Option func(*options)

type options struct{ fullSync bool }

// FullSync makes every commit wait for its WAL frames to reach the disk
// (synchronous=FULL), so an OS crash or power loss loses no acknowledged
// commit. Without it (synchronous=NORMAL) a commit survives any crash of
// the process, and the WAL is synced at each checkpoint (every
// checkpointEvery), so an OS crash can lose the commits of the last
// fraction of a second, never corrupt the file.
func FullSync() Option { return func(o *options) { o.fullSync = true } }

// Open opens (creating it with mode 0600 if absent) the database file at
// path and applies pending migrations. Beside it SQLite keeps path-wal and
// path-shm, and Open a path-lock file that serialises migrations.
func Open(ctx context.Context, path string, logger *slog.Logger, opts ...Option) (storage.Store, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	unlock, err := lockFile(ctx, abs+"-lock")
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	defer unlock()
	// SQLite would create the file with the umask's mode; the database holds
	// sealed secrets and metadata, so create it private first. Only if it is
	// absent: closing a descriptor of a database this process has open would
	// drop SQLite's POSIX locks on it.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("sqlite: create %s: %w", abs, err)
		}
	case !errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("sqlite: create %s: %w", abs, err)
	}

	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	// Freed pages are zeroed, so a destroyed kv version's ciphertext does
	// not linger in the file's free list.
	q.Add("_pragma", "secure_delete(1)")
	// NORMAL is durable across application crashes in WAL mode; only an OS
	// crash can lose the last commits, never corrupt the file (FullSync).
	if o.fullSync {
		q.Add("_pragma", "synchronous(FULL)")
	} else {
		q.Add("_pragma", "synchronous(NORMAL)")
	}
	q.Add("_pragma", fmt.Sprintf("wal_autocheckpoint(%d)", autoCheckpointPages))
	// BEGIN IMMEDIATE takes the write lock up front, so two transactions
	// that read then write queue on busy_timeout instead of one failing
	// with SQLITE_BUSY when it tries to upgrade its read lock.
	q.Set("_txlock", "immediate")
	// A file: URI keeps any '?' or '#' in the path from being read as a
	// query; SQLite ignores the driver's own _ parameters.
	dsn := "file:" + (&url.URL{Path: abs}).EscapedPath() + "?" + q.Encode()

	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxIdleTime(0)
	if err := db.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open %s: %w", abs, err), db.Close())
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: %w", err), db.Close())
	}
	if err := sqldb.Migrate(ctx, db, goose.DialectSQLite3, sub, logger); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: %s: %w", abs, err), db.Close())
	}
	ctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	st := &store{Store: sqldb.New(db, dialect{}, logger), stop: stop, done: make(chan struct{})}
	go checkpointer(ctx, db, logger, st.done)
	return st, nil
}

// store is the shared SQL store plus the background checkpointer, which
// Close stops before closing the database.
type store struct {
	*sqldb.Store
	stop context.CancelFunc
	done chan struct{}
}

func (s *store) Close() error {
	s.stop()
	<-s.done
	return s.Store.Close()
}

// checkpointer runs a PASSIVE checkpoint every checkpointEvery until ctx
// ends, then closes done. Durability is unchanged: a commit is in the
// write-ahead log before it returns either way; the checkpoint only moves
// committed pages into the database file, outside any transaction.
func checkpointer(ctx context.Context, db *sql.DB, logger *slog.Logger, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var busy, logPages, moved int
		err := db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logPages, &moved)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			// Said once per failing spell; the backstop checkpoint in
			// commits still bounds the log meanwhile.
			logger.Warn("sqlite: background checkpoint failed", "err", err)
			failing = true
		case err == nil:
			failing = false
		}
	}
}

// dialect is SQLite's side of sqldb.Dialect.
type dialect struct{}

func (dialect) Name() string             { return "sqlite" }
func (dialect) DollarPlaceholders() bool { return false }
func (dialect) LockSkipLocked() string   { return "" }
func (dialect) SerializeWrites() bool    { return true }

// DueSecondExpr is the lease's due second as migration 00009 indexes it
// (due_at is in microseconds).
func (dialect) DueSecondExpr() string { return "due_at / 1000000" }

// DueSecond is t's second in DueSecondExpr's terms.
func (dialect) DueSecond(t time.Time) any { return t.UnixMicro() / 1_000_000 }

// RowIDs: every table but those declared WITHOUT ROWID has a rowid.
func (dialect) RowIDs() bool { return true }

// ReuseStatements: modernc.org/sqlite parses a query on every execution
// unless it is prepared; the store keeps prepared statements instead.
func (dialect) ReuseStatements() bool { return true }

// Time stores microseconds since the epoch: an INTEGER sorts and compares
// correctly and round-trips exactly at the precision PostgreSQL keeps.
func (dialect) Time(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func (dialect) IsUniqueViolation(err error) bool {
	var e *sqlite3.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code() {
	case sqlite3lib.SQLITE_CONSTRAINT_UNIQUE, sqlite3lib.SQLITE_CONSTRAINT_PRIMARYKEY:
		return true
	}
	return false
}
