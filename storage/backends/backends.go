// Package backends opens the storage backend a configuration names: the
// embedded SQLite database in the data directory, or PostgreSQL. It is
// the one place that knows both, so storage and its implementations stay
// free of configuration.
package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// DBFile is the embedded database inside the data directory.
const DBFile = "sigil.db"

// Open opens the configured backend. fresh reports a data directory that
// has never held an embedded database.
func Open(ctx context.Context, cfg config.Config, log *slog.Logger) (store storage.Store, fresh bool, err error) {
	if cfg.StorageBackend() == "sqlite" {
		dbPath := filepath.Join(cfg.DataDir, DBFile)
		_, statErr := os.Stat(dbPath)
		fresh = errors.Is(statErr, os.ErrNotExist)
		var opts []sqlite.Option
		if cfg.StorageSync == config.SyncFull {
			opts = append(opts, sqlite.FullSync())
		}
		store, err = sqlite.Open(ctx, dbPath, log, opts...)
	} else {
		store, err = postgres.Open(ctx, cfg.Storage, log)
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s storage: %w", cfg.StorageBackend(), err)
	}
	return store, fresh, nil
}
