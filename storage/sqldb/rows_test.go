package sqldb

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// testDialect is SQLite's, enough for a Store over a bare database.
type testDialect struct{}

func (testDialect) Name() string                 { return "sqlite" }
func (testDialect) DollarPlaceholders() bool     { return false }
func (testDialect) Time(t time.Time) any         { return t.UnixMicro() }
func (testDialect) LockSkipLocked() string       { return "" }
func (testDialect) IsUniqueViolation(error) bool { return false }
func (testDialect) SerializeWrites() bool        { return true }
func (testDialect) ReuseStatements() bool        { return true }

// TestInsertRows: rows go in INSERTs of 64, 32, …, 1 rows, so 103 rows
// take five statements of five sizes (each prepared once); a repeated key
// under unique is ErrConflict; malformed rows are refused, not sent.
func TestInsertRows(t *testing.T) {
	ctx := t.Context()
	db := bareSQLite(t)
	if _, err := db.ExecContext(ctx, `CREATE TABLE r (k INTEGER PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	s := New(db, testDialect{}, nil)
	r := repos{s: s, q: db}
	var rows [][]any
	for i := range 103 {
		rows = append(rows, []any{i, "v"})
	}
	if err := r.insertRows(ctx, "t", "r", "k, v", rows, true); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM r`).Scan(&n); err != nil || n != 103 {
		t.Fatalf("rows stored: %d %v", n, err)
	}
	var sizes []int
	for q := range s.stmts.m {
		if strings.HasPrefix(q, "INSERT INTO r ") {
			sizes = append(sizes, strings.Count(q, "(?, ?)"))
		}
	}
	if len(sizes) != 5 {
		t.Fatalf("statements of %v rows, want five sizes (64, 32, 4, 2, 1)", sizes)
	}
	if err := r.insertRows(ctx, "t", "r", "k, v", [][]any{{500, "a"}, {102, "b"}}, true); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("a stored key: %v, want ErrConflict", err)
	}
	for name, bad := range map[string][][]any{
		"empty row":   {{}},
		"uneven rows": {{1000, "a"}, {1001}},
	} {
		if err := r.insertRows(ctx, "t", "r", "k, v", bad, false); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := r.insertRows(ctx, "t", "r", "k, v", nil, true); err != nil {
		t.Fatalf("no rows: %v", err)
	}
}
