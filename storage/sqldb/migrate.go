package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
)

// ErrSchemaTooNew: the database was migrated by a newer sigil than this
// one. An older binary must not run on it: it would not know what the newer
// schema means (a column it does not fill, an index its queries no longer
// match), and in a cluster it would write rows the newer nodes misread.
var ErrSchemaTooNew = errors.New("the database schema is newer than this sigil")

// Migrate applies the pending migrations in fsys (goose SQL files at its
// root) with goose's Provider. opts may add a locker; PostgreSQL passes a
// session (advisory) locker so nodes opening one database at once apply
// each migration exactly once. A database at a version past the last
// migration in fsys is refused with ErrSchemaTooNew.
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
	// goose's Up ignores versions in the database that fsys does not have,
	// so an older binary would start on a newer schema without a word.
	current, err := p.GetDBVersion(ctx)
	if err != nil {
		return fmt.Errorf("migrations: reading the schema version: %w", err)
	}
	if srcs := p.ListSources(); len(srcs) > 0 {
		if known := srcs[len(srcs)-1].Version; current > known {
			return fmt.Errorf("%w: it is at version %d and this sigil knows versions up to %d; a newer sigil upgraded it, so run that version or a later one (to go back, restore a backup taken before the upgrade)",
				ErrSchemaTooNew, current, known)
		}
	}
	return nil
}
