package sqldb

import (
	"context"
	"fmt"
	"strings"

	"github.com/sigil-ca/sigil/storage"
)

// maxRowsPerInsert bounds the rows of one multi-row INSERT (64 rows of the
// widest table, certificates, are 1088 parameters).
const maxRowsPerInsert = 64

// insertRows inserts rows, each a value per column of cols, into table
// with multi-row INSERTs of 64, 32, …, 1 rows: a batch costs a few
// statements (round trips, on PostgreSQL) instead of one per row, and the
// statement texts stay few, so each is prepared once and reused. With
// unique, a row that conflicts with a stored one (or an earlier row) is
// ErrConflict; inside a transaction the caller's rollback then undoes the
// rows already inserted.
func (r repos) insertRows(ctx context.Context, op, table, cols string, rows [][]any, unique bool) error {
	for len(rows) > 0 {
		k := maxRowsPerInsert
		for k > len(rows) {
			k /= 2
		}
		width := len(rows[0])
		if width == 0 {
			return fmt.Errorf("%s: a row without values", op)
		}
		row := "(" + strings.Repeat("?, ", width-1) + "?)"
		var b strings.Builder
		b.Grow(len(table) + len(cols) + k*(len(row)+2) + 48)
		b.WriteString("INSERT INTO " + table + " (" + cols + ") VALUES ")
		args := make([]any, 0, k*width)
		for i, vals := range rows[:k] {
			if len(vals) != width {
				return fmt.Errorf("%s: row %d has %d values, want %d", op, i, len(vals), width)
			}
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(row)
			args = append(args, vals...)
		}
		if unique {
			b.WriteString(" ON CONFLICT DO NOTHING")
		}
		res, err := r.exec(ctx, b.String(), args...)
		if err != nil {
			return r.wrap(op, err)
		}
		if unique {
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("%s: rows affected: %w", op, err)
			}
			if n != int64(k) {
				return fmt.Errorf("%s: %w", op, storage.ErrConflict)
			}
		}
		rows = rows[k:]
	}
	return nil
}
