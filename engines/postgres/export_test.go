package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Test hooks. The tests live in package postgres_test because they use
// internal/testharness, which imports the server, which imports this
// package.

func (e *Engine) ExecForTest(ctx context.Context, sql string) error { return e.exec(ctx, sql) }
func (e *Engine) RoleExistsForTest(ctx context.Context, name string) (bool, error) {
	return e.roleExists(ctx, name)
}
func (e *Engine) PoolForTest() *pgxpool.Pool { p, _ := e.getPool(); return p }
func (e *Engine) ConfigForTest() map[string]string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.cfg
}

func SCRAMVerifierForTest(pw string, iter int) (string, error) { return scramVerifier(pw, iter) }
func SCRAMVerifierSaltForTest(pw string, salt []byte, iter int) (string, error) {
	return scramVerifierSalt(pw, salt, iter)
}
func UsernameForTest(tmpl, role string, now time.Time) string { return username(tmpl, role, now) }
func CutForTest(s string, n int) string                       { return cut(s, n) }
func QuoteLiteralForTest(s string) string                     { return quoteLiteral(s) }
func SplitStatementsForTest(sql string) []string              { return splitStatements(sql) }
