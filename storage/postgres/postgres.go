// Package postgres opens Sigil's shared storage on PostgreSQL through pgx's
// database/sql driver, migrates it at Open under an advisory lock, and serves
// it with the shared SQL implementation in storage/sqldb.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqldb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Pool bounds. Every connection may stay idle (ConnMaxIdleTime closes those
// unused for minutes): with fewer idle than open allowed, each burst wider
// than the idle limit closed its extra connections when it ended and the
// next burst opened them again, a backend fork and a SCRAM handshake
// each (ACME on PostgreSQL ran at two thirds of its rate).
const (
	maxConns     = 20
	maxIdleConns = maxConns
)

// Open connects to the database dsn names (a postgres:// URL or key=value
// string) and applies pending migrations. Several nodes may Open one
// database at once: migrations run under a session advisory lock.
func Open(ctx context.Context, dsn string, logger *slog.Logger) (storage.Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's parse error may quote the DSN, password included.
		return nil, errors.New("postgres: invalid DSN")
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxIdleConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	// Log the target without the password.
	target := fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
	if err := db.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("postgres: connect %s: %w", target, err), db.Close())
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("postgres: %w", err), db.Close())
	}
	// Retry the lock every second for up to five minutes: a peer's
	// migrations are short, and goose's default 5 s probe would slow every
	// concurrent start.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("postgres: migration lock: %w", err), db.Close())
	}
	if err := sqldb.Migrate(ctx, db, goose.DialectPostgres, sub, logger, goose.WithSessionLocker(locker)); err != nil {
		return nil, errors.Join(fmt.Errorf("postgres: %s: %w", target, err), db.Close())
	}
	logger.DebugContext(ctx, "postgres storage open", "target", target)
	return sqldb.New(db, dialect{}, logger), nil
}

// DropIdle closes db's idle connections (then lets it keep idle ones
// again): after the server restarted or failed over, every pooled
// connection is dead and would fail one call each. database/sql closes
// idle connections beyond a lowered limit at once.
func DropIdle(db *sql.DB) {
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(maxIdleConns)
}

// dialect is PostgreSQL's side of sqldb.Dialect.
type dialect struct{}

func (dialect) Name() string             { return "postgres" }
func (dialect) DollarPlaceholders() bool { return true }
func (dialect) LockSkipLocked() string   { return " FOR UPDATE SKIP LOCKED" }
func (dialect) SerializeWrites() bool    { return false }

// Time passes a UTC time truncated to TIMESTAMPTZ's microsecond precision,
// so what is written compares equal to what is read back.
func (dialect) Time(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Truncate(time.Microsecond)
}

func (dialect) IsUniqueViolation(err error) bool {
	var e *pgconn.PgError
	return errors.As(err, &e) && e.Code == "23505"
}
