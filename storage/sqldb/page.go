package sqldb

import (
	"context"
	"strings"
)

// rowScanner is what the scan functions read one row from (*sql.Row,
// *sql.Rows).
type rowScanner interface{ Scan(...any) error }

// queryAll runs q and scans every row with scan.
func queryAll[T any](ctx context.Context, r repos, scan func(rowScanner) (T, error), q string, args ...any) ([]T, error) {
	rows, err := r.query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// keysetPage is one page of a keyset-paginated list: the rows of from
// matching where, with key > after, in key order.
type keysetPage struct {
	selectFrom string   // "SELECT cols FROM table"
	where      []string // conditions, ANDed; "?" placeholders
	args       []any    // arguments of where
	key        string   // unique column the pages are ordered by
	after      string   // cursor: the last key of the previous page, or ""
	limit      int      // requested page size, clamped
}

// queryPage returns one keyset page and the cursor of the next ("" when
// this is the last page). One extra row tells whether another page exists.
func queryPage[T any](ctx context.Context, r repos, p keysetPage, scan func(rowScanner) (T, error), keyOf func(T) string) ([]T, string, error) {
	where, args := p.where, p.args
	if p.after != "" {
		where = append(where[:len(where):len(where)], p.key+" > ?")
		args = append(args[:len(args):len(args)], p.after)
	}
	limit := clampLimit(p.limit)
	q := p.selectFrom
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY " + p.key + " LIMIT ?"
	out, err := queryAll(ctx, r, scan, q, append(args, limit+1)...)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = keyOf(out[limit-1])
	}
	return out, next, nil
}
