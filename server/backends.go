package server

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

// dbFile is the embedded database inside the data directory.
const dbFile = "sigil.db"

// openStorage opens the configured backend. fresh reports a data directory
// that has never held an embedded database.
func openStorage(ctx context.Context, cfg config.Config, log *slog.Logger) (store storage.Store, fresh bool, err error) {
	if cfg.StorageBackend() == "sqlite" {
		dbPath := filepath.Join(cfg.DataDir, dbFile)
		_, statErr := os.Stat(dbPath)
		fresh = errors.Is(statErr, os.ErrNotExist)
		store, err = sqlite.Open(ctx, dbPath, log)
	} else {
		store, err = postgres.Open(ctx, cfg.Storage, log)
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s storage: %w", cfg.StorageBackend(), err)
	}
	return store, fresh, nil
}

// ReopenAuditFile reopens the audit file after logrotate moved it (SIGHUP).
func (s *Server) ReopenAuditFile() error {
	a := s.current()
	if a == nil || a.AuditFile == nil {
		return nil
	}
	return a.AuditFile.Reopen()
}
