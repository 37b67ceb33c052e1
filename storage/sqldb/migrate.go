package sqldb

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
)

// Migrate applies the pending migrations in fsys (goose SQL files at its
// root) with goose's Provider. opts may add a locker; PostgreSQL passes a
// session (advisory) locker so nodes opening one database at once apply
// each migration exactly once.
func Migrate(ctx context.Context, db *sql.DB, dialect goose.Dialect, fsys fs.FS, logger *slog.Logger, opts ...goose.ProviderOption) error {
	p, err := goose.NewProvider(dialect, db, fsys, opts...)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrations: up: %w", err)
	}
	for _, r := range results {
		logger.InfoContext(ctx, "storage migration applied",
			"version", r.Source.Version, "path", r.Source.Path, "duration", r.Duration)
	}
	return nil
}
