package sqlite

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestLeaseDuePlans checks that the lease queries keyed by the due second
// (sqldb.DueSeconder) are range scans of the index migration 00009
// creates, in index order: the dialect's expression must stay identical to
// the indexed one, or claiming and pruning become scans of the whole
// table with a sort.
func TestLeaseDuePlans(t *testing.T) {
	st, err := Open(t.Context(), filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	db := st.(*store).DB()
	expr := dialect{}.DueSecondExpr()
	for _, tc := range []struct {
		name, q string
	}{
		{"past seconds", `SELECT rowid FROM leases WHERE state = 'active' AND ` + expr + ` < 5 ORDER BY ` + expr + `, rowid LIMIT 10`},
		{"current second", `SELECT rowid FROM leases WHERE state = 'active' AND ` + expr + ` = 5 ORDER BY rowid LIMIT 10`},
		{"claimed batch", `SELECT id, rowid FROM leases WHERE claimed_until = 5`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := db.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+tc.q)
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
			p := strings.Join(plan, "; ")
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
