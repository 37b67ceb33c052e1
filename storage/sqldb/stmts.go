package sqldb

import (
	"context"
	"database/sql"
	"sync"
)

// StatementReuser is implemented by a Dialect whose driver parses a query
// afresh on every execution unless it was prepared (modernc.org/sqlite:
// sqlite3_prepare was ~9% of the server's CPU on kv reads). The Store then
// prepares each query once on the *sql.DB and runs it through that
// statement, inside transactions too (Tx.StmtContext reuses the statement
// already prepared on the transaction's connection). pgx caches prepared
// statements per connection itself, so PostgreSQL does not need it.
type StatementReuser interface {
	ReuseStatements() bool
}

// maxStmts bounds the cache. The package's queries are constants or a few
// filter combinations, far fewer than this; past it, queries simply run
// unprepared.
const maxStmts = 256

// stmtCache holds the Store's prepared statements by query text (after
// placeholder rewriting), each prepared lazily on first use. database/sql
// prepares a statement on each pool connection at most once.
type stmtCache struct {
	db *sql.DB
	mu sync.RWMutex
	m  map[string]*sql.Stmt
}

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, m: map[string]*sql.Stmt{}}
}

// get returns q's statement, preparing it on first use, or nil when the
// cache is full or preparing failed (the caller then runs q unprepared, so
// a query's error reaches its caller exactly as before). The lock is not
// held while preparing, which waits for a pool connection: a caller
// holding a connection must never wait on the lock behind that.
func (c *stmtCache) get(ctx context.Context, q string) *sql.Stmt {
	c.mu.RLock()
	st, full := c.m[q], len(c.m) >= maxStmts
	c.mu.RUnlock()
	if st != nil || full {
		return st
	}
	// ctx bounds the preparation only; the statement outlives this call.
	st, err := c.db.PrepareContext(ctx, q)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev := c.m[q]; prev != nil {
		_ = st.Close() // another caller prepared it meanwhile; ours is unused
		return prev
	}
	if len(c.m) >= maxStmts {
		_ = st.Close()
		return nil
	}
	c.m[q] = st
	return st
}

// close closes every statement; the Store calls it before closing the DB.
func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.m {
		_ = st.Close() // the DB is closed next, which frees what is left
		delete(c.m, q)
	}
}

// stmt returns the prepared statement for q (already rewritten for the
// dialect) bound to r's transaction if r is in one, or nil when the Store
// does not reuse statements.
func (r repos) stmt(ctx context.Context, q string) *sql.Stmt {
	if r.s.stmts == nil {
		return nil
	}
	st := r.s.stmts.get(ctx, q)
	if st == nil {
		return nil
	}
	if tx, ok := r.q.(*sql.Tx); ok {
		// Closed with the transaction; the parent statement stays.
		return tx.StmtContext(ctx, st)
	}
	return st
}
