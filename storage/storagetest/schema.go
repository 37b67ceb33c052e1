package storagetest

import (
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqldb"
)

// SchemaTooNew checks that a database a newer sigil migrated (a schema
// version past this binary's last migration) is refused at open, by name,
// so an old node cannot rejoin a cluster that was upgraded past it. db
// reaches a migrated database with no store open on it; reopen opens it
// as the backend does.
func SchemaTooNew(t *testing.T, db *sql.DB, reopen func() (storage.Store, error)) {
	t.Helper()
	if _, err := db.Exec(`INSERT INTO goose_db_version (version_id, is_applied) VALUES (99999, TRUE)`); err != nil {
		t.Fatal(err)
	}
	s, err := reopen()
	if err == nil {
		s.Close()
	}
	if !errors.Is(err, sqldb.ErrSchemaTooNew) || !strings.Contains(err.Error(), "version 99999") {
		t.Fatalf("open of a newer schema: %v, want ErrSchemaTooNew naming version 99999", err)
	}
}
