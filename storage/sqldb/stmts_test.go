package sqldb

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" driver
)

// bareSQLite is an empty SQLite database of the test's, closed with it.
func bareSQLite(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestStmtCache(t *testing.T) {
	ctx := t.Context()
	db := bareSQLite(t)
	c := newStmtCache(db)

	// Concurrent first uses end with one statement, the one every caller
	// then gets.
	const q = `SELECT 1`
	got := make([]*sql.Stmt, 8)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = c.get(ctx, q) })
	}
	wg.Wait()
	for _, st := range got {
		if st == nil || st != c.get(ctx, q) {
			t.Fatalf("get returned %p, cached %p", st, c.get(ctx, q))
		}
	}
	var n int
	if err := got[0].QueryRowContext(ctx).Scan(&n); err != nil || n != 1 {
		t.Fatalf("cached statement: %d %v", n, err)
	}

	// A query that does not prepare is not cached: the caller runs it
	// unprepared and gets the database's error there.
	if st := c.get(ctx, `SELECT FROM nowhere`); st != nil {
		t.Fatal("bad query cached")
	}

	// The cache is bounded.
	for i := len(c.m); i < maxStmts; i++ {
		if c.get(ctx, fmt.Sprintf("SELECT %d", i+2)) == nil {
			t.Fatalf("statement %d not cached", i)
		}
	}
	if st := c.get(ctx, `SELECT 'one too many'`); st != nil || len(c.m) != maxStmts {
		t.Fatalf("cache grew past %d: %d", maxStmts, len(c.m))
	}
	if c.get(ctx, q) != got[0] {
		t.Fatal("a full cache lost a statement")
	}

	c.close()
	if len(c.m) != 0 {
		t.Fatalf("%d statements left after close", len(c.m))
	}
}
