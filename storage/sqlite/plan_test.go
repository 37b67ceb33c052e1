package sqlite

import (
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
)

// queryPlan is SQLite's plan of q, its steps joined by "; ".
func queryPlan(t *testing.T, db *sql.DB, q string) string {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(plan, "; ")
}

// openPlanDB is a migrated store's database, for plans.
func openPlanDB(t *testing.T) *sql.DB {
	t.Helper()
	st, err := Open(t.Context(), filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.(*store).DB()
}

// TestLeaseDuePlans checks that the lease queries keyed by the due second
// (sqldb.DueSeconder) are range scans of the index migration 00009
// creates, in index order: the dialect's expression must stay identical to
// the indexed one, or claiming and pruning become scans of the whole
// table with a sort.
func TestLeaseDuePlans(t *testing.T) {
	db := openPlanDB(t)
	expr := dialect{}.DueSecondExpr()
	for _, tc := range []struct {
		name, q string
	}{
		{"past seconds", `SELECT rowid FROM leases WHERE state = 'active' AND ` + expr + ` < 5 ORDER BY ` + expr + `, rowid LIMIT 10`},
		{"current second", `SELECT rowid FROM leases WHERE state = 'active' AND ` + expr + ` = 5 ORDER BY rowid LIMIT 10`},
		{"claimed batch", `SELECT id, rowid FROM leases WHERE claimed_until = 5`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := queryPlan(t, db, tc.q)
			want := "leases_state_due_second"
			if tc.name == "claimed batch" {
				want = "leases_claimed"
			}
			if !strings.Contains(p, "SEARCH leases USING") || !strings.Contains(p, want) || strings.Contains(p, "TEMP B-TREE") {
				t.Fatalf("plan %q: want a search of %s without a sort", p, want)
			}
		})
	}
}

// TestACMEAccountQueriesUseTheirIndex: the queries run on every new ACME
// order (the account's pending orders, its authorizations of one
// identifier in one status) must find their rows through the index keyed
// by status (migration 00010), not walk every order and authorization the
// account ever had.
func TestACMEAccountQueriesUseTheirIndex(t *testing.T) {
	db := openPlanDB(t)
	for _, q := range []string{
		// storage/sqldb acmeRepo.CountUnexpired and List with the filters
		// ra.checkPendingLimit and ra.reusableAuthz give.
		`SELECT SUM(CASE WHEN expires_at > 0 THEN 1 ELSE 0 END), MIN(CASE WHEN expires_at > 0 THEN expires_at END) FROM acme_objects WHERE kind = 'order' AND account_id = 'a' AND status = 'pending'`,
		`SELECT id FROM acme_objects WHERE kind = 'authz' AND account_id = 'a' AND ref = 'dns:x' AND status = 'valid' ORDER BY id LIMIT 20`,
	} {
		if p := queryPlan(t, db, q); !strings.Contains(p, "acme_objects_account_status") || !strings.Contains(p, "status=?") {
			t.Errorf("%s\nplan: %s\nwant a search of acme_objects_account_status by status", q, p)
		}
	}
}
