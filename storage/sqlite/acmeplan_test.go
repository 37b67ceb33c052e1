package sqlite_test

import (
	"database/sql"
	"strings"
	"testing"
)

// TestACMEAccountQueriesUseTheirIndex: the queries run on every new ACME
// order (the account's pending orders, its authorizations of one
// identifier in one status) must find their rows through an index keyed by
// status, not walk every order and authorization the account ever had.
func TestACMEAccountQueriesUseTheirIndex(t *testing.T) {
	db := open(t).(interface{ DB() *sql.DB }).DB()
	for _, q := range []string{
		// storage/sqldb acmeRepo.CountUnexpired and List with the filters
		// ra.checkPendingLimit and ra.reusableAuthz give.
		`SELECT SUM(CASE WHEN expires_at > 0 THEN 1 ELSE 0 END), MIN(CASE WHEN expires_at > 0 THEN expires_at END) FROM acme_objects WHERE kind = 'order' AND account_id = 'a' AND status = 'pending'`,
		`SELECT id FROM acme_objects WHERE kind = 'authz' AND account_id = 'a' AND ref = 'dns:x' AND status = 'valid' ORDER BY id LIMIT 20`,
	} {
		rows, err := db.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+q)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if p := strings.Join(plan, "; "); !strings.Contains(p, "acme_objects_account_status") || !strings.Contains(p, "status=?") {
			t.Errorf("%s\nplan: %s\nwant a search of acme_objects_account_status by status", q, p)
		}
	}
}
