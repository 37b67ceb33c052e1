package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

type leases struct{ r repos }

const leaseCols = `id, mount, role, identity, issued_at, expires_at, max_expires_at, renewable,
	sealed_revocation, state, attempts, next_attempt_at, last_error, claimed_until`

func scanLease(sc interface{ Scan(...any) error }) (*storage.Lease, error) {
	var l storage.Lease
	var state string
	err := sc.Scan(&l.ID, &l.Mount, &l.Role, &l.Identity, timeCol{&l.IssuedAt},
		timeCol{&l.ExpiresAt}, timeCol{&l.MaxExpiresAt}, &l.Renewable, &l.SealedRevocation,
		&state, &l.Attempts, timeCol{&l.NextAttemptAt}, &l.LastError, timeCol{&l.ClaimedUntil})
	if err != nil {
		return nil, err
	}
	l.State = storage.LeaseState(state)
	return &l, nil
}

func scanLeases(rows *sql.Rows) ([]*storage.Lease, error) {
	defer rows.Close()
	var out []*storage.Lease
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// put records a new lease; an empty State is set to active, in l too.
func (s leases) put(ctx context.Context, l *storage.Lease) error {
	if l.State == "" {
		l.State = storage.LeaseActive
	}
	return s.r.insert(ctx, "leases: put "+l.ID, `INSERT INTO leases (`+leaseCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		l.ID, l.Mount, l.Role, l.Identity, s.r.t(l.IssuedAt), s.r.t(l.ExpiresAt),
		s.r.t(l.MaxExpiresAt), l.Renewable, l.SealedRevocation, string(l.State), l.Attempts,
		s.r.t(l.NextAttemptAt), l.LastError, s.r.t(l.ClaimedUntil))
}

func (s leases) Get(ctx context.Context, id string) (*storage.Lease, error) {
	l, err := scanLease(s.r.queryRow(ctx, `SELECT `+leaseCols+` FROM leases WHERE id = ?`, id))
	if err != nil {
		return nil, s.r.wrap("leases: get "+id, err)
	}
	return l, nil
}

// prefixWhere appends the id range for prefix to where/args.
func prefixWhere(where []string, args []any, prefix string) ([]string, []any) {
	if prefix == "" {
		return where, args
	}
	where = append(where, "id >= ?")
	args = append(args, prefix)
	if end, ok := prefixEnd(prefix); ok {
		where = append(where, "id < ?")
		args = append(args, end)
	}
	return where, args
}

func (s leases) List(ctx context.Context, f storage.LeaseFilter) ([]*storage.Lease, string, error) {
	const op = "leases: list"
	where, args := prefixWhere(nil, nil, f.Prefix)
	if f.State != "" {
		where = append(where, "state = ?")
		args = append(args, string(f.State))
	}
	if f.After != "" {
		where = append(where, "id > ?")
		args = append(args, f.After)
	}
	limit := clampLimit(f.Limit)
	q := `SELECT ` + leaseCols + ` FROM leases`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id LIMIT ?"
	args = append(args, limit+1)
	rows, err := s.r.query(ctx, q, args...)
	if err != nil {
		return nil, "", s.r.wrap(op, err)
	}
	out, err := scanLeases(rows)
	if err != nil {
		return nil, "", s.r.wrap(op, err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	}
	return out, next, nil
}

// extend sets a new expiry on an active lease: ErrNotFound if there is no
// such lease, ErrConflict if it is no longer active. Bounding the expiry by
// MaxExpiresAt is the caller's policy.
func (s leases) replaceSealed(ctx context.Context, id string, old, new []byte) error {
	res, err := s.r.exec(ctx, `UPDATE leases SET sealed_revocation = ? WHERE id = ? AND sealed_revocation = ?`, new, id, old)
	return s.r.casResult(ctx, "leases: replace sealed "+id, res, err, `SELECT 1 FROM leases WHERE id = ?`, id)
}

func (s leases) extend(ctx context.Context, id string, expiresAt time.Time) error {
	op := "leases: extend " + id
	res, err := s.r.exec(ctx, `UPDATE leases SET expires_at = ? WHERE id = ? AND state = ?`,
		s.r.t(expiresAt), id, string(storage.LeaseActive))
	if err != nil {
		return s.r.wrap(op, err)
	}
	if err := affected(op, res); !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	var state string
	err = s.r.queryRow(ctx, `SELECT state FROM leases WHERE id = ?`, id).Scan(&state)
	if err != nil {
		return s.r.wrap(op, err)
	}
	return fmt.Errorf("%s: lease is %s: %w", op, state, storage.ErrConflict)
}

// claimDue marks due leases claimed in one statement. On PostgreSQL the
// subquery locks the rows it picks and skips rows another claimer holds, so
// concurrent claimers split the due set instead of queueing on it; a row
// claimed and committed meanwhile is re-checked against the WHERE clause
// and dropped. SQLite serialises writers, so the statement alone suffices.
func (s leases) claimDue(ctx context.Context, now, claimUntil time.Time, limit int) ([]*storage.Lease, error) {
	const op = "leases: claim due"
	if limit <= 0 {
		return nil, nil
	}
	n := s.r.t(now)
	rows, err := s.r.query(ctx, `UPDATE leases SET claimed_until = ? WHERE id IN (
		SELECT id FROM leases
		WHERE state = ? AND expires_at <= ?
		  AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
		  AND (claimed_until IS NULL OR claimed_until <= ?)
		ORDER BY expires_at, id LIMIT ?`+s.r.s.d.LockSkipLocked()+`)
		RETURNING `+leaseCols,
		s.r.t(claimUntil), string(storage.LeaseActive), n, n, n, limit)
	if err != nil {
		return nil, s.r.wrap(op, err)
	}
	out, err := scanLeases(rows)
	if err != nil {
		return nil, s.r.wrap(op, err)
	}
	// RETURNING follows no ORDER BY; give callers the oldest first.
	sort.Slice(out, func(i, j int) bool {
		if !out[i].ExpiresAt.Equal(out[j].ExpiresAt) {
			return out[i].ExpiresAt.Before(out[j].ExpiresAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// setState records a revocation attempt's outcome and releases the claim,
// so a lease left active is claimable again from nextAttempt.
func (s leases) setState(ctx context.Context, id string, st storage.LeaseState, attempts int, nextAttempt time.Time, lastErr string) error {
	op := "leases: set state " + id
	res, err := s.r.exec(ctx, `UPDATE leases SET state = ?, attempts = ?, next_attempt_at = ?,
		last_error = ?, claimed_until = NULL WHERE id = ?`,
		string(st), attempts, s.r.t(nextAttempt), lastErr, id)
	if err != nil {
		return s.r.wrap(op, err)
	}
	return affected(op, res)
}

func (s leases) CountActive(ctx context.Context, prefix string) (int, error) {
	where, args := prefixWhere([]string{"state = ?"}, []any{string(storage.LeaseActive)}, prefix)
	var n int
	err := s.r.queryRow(ctx, `SELECT COUNT(*) FROM leases WHERE `+strings.Join(where, " AND "), args...).Scan(&n)
	if err != nil {
		return 0, s.r.wrap("leases: count active", err)
	}
	return n, nil
}

func (s leases) releaseClaims(ctx context.Context) (int, error) {
	res, err := s.r.exec(ctx, `UPDATE leases SET claimed_until = NULL WHERE claimed_until IS NOT NULL`)
	if err != nil {
		return 0, s.r.wrap("leases: release claims", err)
	}
	n, err := res.RowsAffected()
	return int(n), s.r.wrap("leases: release claims", err)
}
