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
	sealed_revocation, state, attempts, next_attempt_at, last_error, claimed_until, owner`

func scanLease(sc rowScanner) (*storage.Lease, error) {
	var l storage.Lease
	var state string
	err := sc.Scan(&l.ID, &l.Mount, &l.Role, &l.Identity, timeCol{&l.IssuedAt},
		timeCol{&l.ExpiresAt}, timeCol{&l.MaxExpiresAt}, &l.Renewable, &l.SealedRevocation,
		&state, &l.Attempts, timeCol{&l.NextAttemptAt}, &l.LastError, timeCol{&l.ClaimedUntil}, &l.Owner)
	if err != nil {
		return nil, err
	}
	l.State = storage.LeaseState(state)
	return &l, nil
}

// due_at (migration 00004) is, for an active lease, when the expiry worker
// may next claim it: the latest of its expiry, its next attempt and its
// claim's end. For a closed (revoked or irrevocable) lease it is when the
// lease was closed, which pruning goes by. The index (state, due_at, id)
// makes claiming and pruning range scans. On SQLite the index is
// (state, due second) instead (migration 00009, DueSeconder).

// dueAt is l's due_at.
func dueAt(l *storage.Lease) time.Time {
	if !l.State.Open() {
		return now()
	}
	d := l.ExpiresAt
	if l.NextAttemptAt.After(d) {
		d = l.NextAttemptAt
	}
	if l.ClaimedUntil.After(d) {
		d = l.ClaimedUntil
	}
	return d
}

// put records a new lease; an empty State is set to active, in l too.
func (s leases) put(ctx context.Context, l *storage.Lease) error {
	if l.State == "" {
		l.State = storage.LeaseActive
	}
	return s.r.insert(ctx, "leases: put "+l.ID, `INSERT INTO leases (`+leaseCols+`, due_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		l.ID, l.Mount, l.Role, l.Identity, s.r.t(l.IssuedAt), s.r.t(l.ExpiresAt),
		s.r.t(l.MaxExpiresAt), l.Renewable, l.SealedRevocation, string(l.State), l.Attempts,
		s.r.t(l.NextAttemptAt), l.LastError, s.r.t(l.ClaimedUntil), l.Owner, s.r.t(dueAt(l)))
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
	switch f.State {
	case "":
	case storage.LeaseActive, storage.LeasePending, storage.LeaseIrrevocable, storage.LeaseRevoked:
		// A literal, so the partial index of the state can serve it.
		where = append(where, "state = '"+string(f.State)+"'")
	default:
		where = append(where, "state = ?")
		args = append(args, string(f.State))
	}
	out, next, err := queryPage(ctx, s.r, keysetPage{
		selectFrom: `SELECT ` + leaseCols + ` FROM leases`,
		where:      where, args: args, key: "id", after: f.After, limit: f.Limit,
	}, scanLease, func(l *storage.Lease) string { return l.ID })
	if err != nil {
		return nil, "", s.r.wrap(op, err)
	}
	return out, next, nil
}

func (s leases) replaceSealed(ctx context.Context, id string, old, new []byte) error {
	res, err := s.r.exec(ctx, `UPDATE leases SET sealed_revocation = ? WHERE id = ? AND sealed_revocation = ?`, new, id, old)
	return s.r.casResult(ctx, "leases: replace sealed "+id, res, err, `SELECT 1 FROM leases WHERE id = ?`, id)
}

// extend moves an active, unclaimed lease's expiry from from (the expiry
// the caller read and judged) to to: ErrNotFound if there is no such
// lease, ErrConflict if it is no longer active, is claimed, or its expiry
// is no longer from. A claim or a moved expiry means a revocation began
// (the expiry worker's claim, or one by request, which ends the lease at
// once) or another renewal won; a renewal landing beside either would be
// reported as granted while the revocation goes on. The check and the
// change are one statement on the row, so exactly one of them wins.
// Bounding the expiry by MaxExpiresAt is the caller's policy. due_at
// becomes the later of the new expiry and the next attempt.
func (s leases) extend(ctx context.Context, id string, from, to time.Time) error {
	op := "leases: extend " + id
	e := s.r.t(to)
	res, err := s.r.exec(ctx, `UPDATE leases SET expires_at = ?, due_at = CASE
			WHEN next_attempt_at > ? THEN next_attempt_at ELSE ? END
		WHERE id = ? AND state = ? AND claimed_until IS NULL AND expires_at = ?`,
		e, e, e, id, string(storage.LeaseActive), s.r.t(from))
	if err != nil {
		return s.r.wrap(op, err)
	}
	if err := affected(op, res); !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	var state string
	var claimed any
	err = s.r.queryRow(ctx, `SELECT state, claimed_until FROM leases WHERE id = ?`, id).Scan(&state, &claimed)
	if err != nil {
		return s.r.wrap(op, err)
	}
	if state != string(storage.LeaseActive) {
		return fmt.Errorf("%s: lease is %s: %w", op, state, storage.ErrConflict)
	}
	if claimed != nil {
		return fmt.Errorf("%s: the lease is being revoked: %w", op, storage.ErrConflict)
	}
	return fmt.Errorf("%s: the lease changed meanwhile (revoked by request, or renewed by another call): %w", op, storage.ErrConflict)
}

// activate makes a pending lease active with its real expiry. A claimed
// lease is refused: the expiry worker is revoking it (it was due, so the
// mint took longer than its pending window), and the caller must take its
// secret back.
func (s leases) activate(ctx context.Context, id string, expiresAt time.Time) error {
	op := "leases: activate " + id
	e := s.r.t(expiresAt)
	res, err := s.r.exec(ctx, `UPDATE leases SET state = ?, expires_at = ?, due_at = CASE
			WHEN next_attempt_at > ? THEN next_attempt_at ELSE ? END
		WHERE id = ? AND state = ? AND claimed_until IS NULL`,
		string(storage.LeaseActive), e, e, e, id, string(storage.LeasePending))
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
	return fmt.Errorf("%s: lease is %s (or claimed): %w", op, state, storage.ErrConflict)
}

// startRevoke ends an open, unclaimed lease at now and claims it until
// claimUntil.
func (s leases) startRevoke(ctx context.Context, id string, now, claimUntil time.Time) error {
	op := "leases: start revoke " + id
	n, until := s.r.t(now), s.r.t(claimUntil)
	res, err := s.r.exec(ctx, `UPDATE leases SET expires_at = CASE WHEN expires_at > ? THEN ? ELSE expires_at END,
			claimed_until = ?, due_at = ?
		WHERE id = ? AND (state = ? OR state = ?) AND (claimed_until IS NULL OR claimed_until <= ?)`,
		n, n, until, until, id, string(storage.LeaseActive), string(storage.LeasePending), n)
	if err != nil {
		return s.r.wrap(op, err)
	}
	if err := affected(op, res); errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%s: not open, or claimed: %w", op, storage.ErrConflict)
	} else if err != nil {
		return err
	}
	return nil
}

// claimDue claims due pending leases first, then due active ones, up to
// limit in all (see claimState).
func (s leases) claimDue(ctx context.Context, now, claimUntil time.Time, limit int) ([]*storage.Lease, error) {
	out, err := s.claimState(ctx, storage.LeasePending, now, claimUntil, limit)
	if err != nil {
		return nil, err
	}
	active, err := s.claimState(ctx, storage.LeaseActive, now, claimUntil, limit-len(out))
	if err != nil {
		// The pending leases claimed are retried when their claim lapses.
		return nil, err
	}
	return append(out, active...), nil
}

// DueSeconder is implemented by a dialect whose lease due index is keyed by
// the due second, (state, DueSecondExpr) with the rowid implied, rather
// than by (state, due_at, id) (SQLite, migration 00009): claiming and
// pruning then take a second's leases in the order their rows are
// stored, so a batch shares table pages instead of writing one page per
// lease. DueSecond(t) is t's second as DueSecondExpr computes it from
// due_at; the two must agree.
type DueSeconder interface {
	DueSecondExpr() string
	DueSecond(t time.Time) any
}

// currentSecondScan bounds how many leases of the current second a claim
// or prune reads to find the due ones among them (see claimBySecond): in
// row order that is some 2,000 table pages, a few milliseconds under the
// write lock. A lower bound leaves due leases of a busy second unclaimed
// until it has passed, and the worker idle meanwhile: at 2,000, 30,000
// leases due within a second took 5.5 s to expire where they took 3.4 s.
const currentSecondScan = 20_000

// claimState marks due leases in state st claimed in one statement, pushing their due_at
// to the claim's end. On PostgreSQL the subquery locks the rows it picks and
// skips rows another claimer holds, so concurrent claimers split the due set
// instead of queueing on it; a row claimed and committed meanwhile is
// re-checked against the WHERE clause and dropped. SQLite serialises
// writers, so the statement alone suffices. The subquery reads only the
// (state, due_at, id) index, from its start: leases that are retrying or in
// flight are not due, so they are never scanned past.
func (s leases) claimState(ctx context.Context, st storage.LeaseState, now, claimUntil time.Time, limit int) ([]*storage.Lease, error) {
	op := "leases: claim due " + string(st)
	if limit <= 0 {
		return nil, nil
	}
	if ds, ok := s.r.s.d.(DueSeconder); ok {
		out, err := s.claimBySecond(ctx, ds, st, now, claimUntil, limit)
		if err != nil {
			return nil, s.r.wrap(op, err)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		return out, nil
	}
	until := s.r.t(claimUntil)
	out, err := queryAll(ctx, s.r, scanLease, `UPDATE leases SET claimed_until = ?, due_at = ? WHERE id IN (
		SELECT id FROM leases WHERE state = ? AND due_at <= ?
		ORDER BY due_at, id LIMIT ?`+s.r.s.d.LockSkipLocked()+`)
		RETURNING `+leaseCols,
		until, until, string(st), s.r.t(now), limit)
	if err != nil {
		return nil, s.r.wrap(op, err)
	}
	// RETURNING follows no ORDER BY.
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// claimBySecond is claimState on a store whose due index is keyed by the
// due second (DueSeconder; writes are serialised there, so it needs no
// row locks). Every lease due in a second before now's is due, so those
// are claimed from the index alone, earliest second first and in row
// order within a second. If that leaves room, leases due in now's own
// second are claimed by their exact due_at, read from the row; at most
// currentSecondScan of them are looked at, so a burst falling due in the
// current second costs one bounded scan per claim, and those not reached
// are claimed once their second has passed. A lease is never claimed
// before its due_at.
func (s leases) claimBySecond(ctx context.Context, ds DueSeconder, st storage.LeaseState, now, claimUntil time.Time, limit int) ([]*storage.Lease, error) {
	until, sec, expr := s.r.t(claimUntil), ds.DueSecond(now), ds.DueSecondExpr()
	out, err := queryAll(ctx, s.r, scanLease, `UPDATE leases SET claimed_until = ?, due_at = ? WHERE rowid IN (
		SELECT rowid FROM leases WHERE state = ? AND `+expr+` < ? ORDER BY `+expr+`, rowid LIMIT ?)
		RETURNING `+leaseCols,
		until, until, string(st), sec, limit)
	if err != nil || len(out) >= limit {
		return out, err
	}
	more, err := queryAll(ctx, s.r, scanLease, `UPDATE leases SET claimed_until = ?, due_at = ? WHERE rowid IN (
		SELECT rowid FROM (SELECT rowid, due_at FROM leases WHERE state = ? AND `+expr+` = ? ORDER BY rowid LIMIT ?)
		WHERE due_at <= ? LIMIT ?)
		RETURNING `+leaseCols,
		until, until, string(st), sec, currentSecondScan, s.r.t(now), limit-len(out))
	if err != nil {
		// The leases claimed by the first statement are retried when their
		// claim lapses (at once after a restart: ReleaseClaims).
		return nil, err
	}
	return append(out, more...), nil
}

// Outcome statements. An active lease is due again at its next attempt, or
// at its expiry when that is later (or there is no next attempt); a closed
// one records when it was closed. With a claim, the row must still hold it.
const (
	setActiveSQL = `UPDATE leases SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,
		claimed_until = NULL, due_at = CASE WHEN ? > expires_at THEN ? ELSE expires_at END WHERE id = ?`
	setClosedSQL = `UPDATE leases SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,
		claimed_until = NULL, due_at = ? WHERE id = ?`
	claimHeld = ` AND claimed_until = ?`
)

// byRowID addresses an outcome's row by its rowid as well as its id (see
// RowIDer): the rowid lookup is the one the planner takes.
const byRowID = ` AND rowid = ?`

// outcomeArgs returns the statement for o and its arguments; rowid, when
// not 0, is o's row's rowid.
func (s leases) outcomeArgs(o *storage.LeaseOutcome, closedAt any, rowid int64) (string, []any) {
	next := s.r.t(o.NextAttempt)
	var q string
	var args []any
	if o.State.Open() {
		q = setActiveSQL
		args = []any{string(o.State), o.Attempts, next, o.LastError, next, next, o.ID}
	} else {
		q = setClosedSQL
		args = []any{string(o.State), o.Attempts, next, o.LastError, closedAt, o.ID}
	}
	if !o.Claim.IsZero() {
		q += claimHeld
		args = append(args, s.r.t(o.Claim))
	}
	if rowid != 0 {
		q += byRowID
		args = append(args, rowid)
	}
	return q, args
}

// RowIDer is implemented by a dialect whose rows have a stable integer
// address, rowid (SQLite). SetStates then finds a claimed batch's rows
// through the small index of claimed leases, in one read, instead of
// through the primary key index of lease ids, where random ids make each
// lookup a page of its own.
type RowIDer interface {
	RowIDs() bool
}

// claimedRowIDs maps the ids of the leases held by the outcomes' claims to
// their rowids, reading only the partial index leases_claimed and the
// rows it names (a claimed batch's rows, already in the page cache).
func (s leases) claimedRowIDs(ctx context.Context, r repos, outcomes []storage.LeaseOutcome) (map[string]int64, error) {
	ids := make(map[string]int64, len(outcomes))
	seen := map[any]bool{}
	for i := range outcomes {
		if outcomes[i].Claim.IsZero() {
			continue
		}
		c := r.t(outcomes[i].Claim)
		if seen[c] {
			continue
		}
		seen[c] = true
		rows, err := r.query(ctx, `SELECT id, rowid FROM leases WHERE claimed_until = ?`, c)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			var rowid int64
			if err := rows.Scan(&id, &rowid); err != nil {
				_ = rows.Close()
				return nil, err
			}
			ids[id] = rowid
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// setState records a revocation attempt's outcome and releases the claim,
// so a lease left active is claimable again from nextAttempt.
func (s leases) setState(ctx context.Context, id string, st storage.LeaseState, attempts int, nextAttempt time.Time, lastErr string) error {
	op := "leases: set state " + id
	q, args := s.outcomeArgs(&storage.LeaseOutcome{ID: id, State: st, Attempts: attempts, NextAttempt: nextAttempt, LastError: lastErr}, s.r.t(now()), 0)
	// Without a claim to vouch for the row, the outcome may not undo one
	// written meanwhile: a closed lease is not reopened, and a revoked one
	// is not marked irrevocable (its secret is gone).
	switch {
	case st.Open():
		q += ` AND (state = '` + string(storage.LeaseActive) + `' OR state = '` + string(storage.LeasePending) + `')`
	case st == storage.LeaseIrrevocable:
		q += ` AND state <> '` + string(storage.LeaseRevoked) + `'`
	}
	err := s.r.execOne(ctx, op, q, args...)
	if !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	var cur string
	if qerr := s.r.queryRow(ctx, `SELECT state FROM leases WHERE id = ?`, id).Scan(&cur); qerr != nil {
		return s.r.wrap(op, qerr)
	}
	return fmt.Errorf("%s: lease is already %s, not set %s: %w", op, cur, st, storage.ErrConflict)
}

// preparer is what *sql.DB and *sql.Tx offer beyond querier.
type preparer interface {
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// SetStates records every outcome in one transaction: the expiry worker
// writes a batch with one commit (one WAL append on SQLite) instead of one
// per lease. Each statement form is prepared once per call.
func (s leases) SetStates(ctx context.Context, outcomes []storage.LeaseOutcome) ([]bool, error) {
	const op = "leases: set states"
	recorded := make([]bool, len(outcomes))
	if len(outcomes) == 0 {
		return recorded, nil
	}
	closedAt := s.r.t(now())
	err := s.r.atomic(ctx, func(r repos) error {
		p, ok := r.q.(preparer)
		if !ok {
			return fmt.Errorf("%s: cannot prepare statements on %T", op, r.q)
		}
		var rowids map[string]int64
		if ri, ok := r.s.d.(RowIDer); ok && ri.RowIDs() {
			var err error
			if rowids, err = s.claimedRowIDs(ctx, r, outcomes); err != nil {
				return r.wrap(op, err)
			}
		}
		stmts := map[string]*sql.Stmt{}
		defer func() {
			for _, st := range stmts {
				_ = st.Close() // closing a statement of a finished transaction only frees it
			}
		}()
		for i := range outcomes {
			q, args := s.outcomeArgs(&outcomes[i], closedAt, rowids[outcomes[i].ID])
			st := stmts[q]
			if st == nil {
				var err error
				if st, err = p.PrepareContext(ctx, r.sql(q)); err != nil {
					return r.wrap(op, err)
				}
				stmts[q] = st
			}
			res, err := st.ExecContext(ctx, args...)
			if err != nil {
				return r.wrap(op+" "+outcomes[i].ID, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return fmt.Errorf("%s %s: rows affected: %w", op, outcomes[i].ID, err)
			}
			recorded[i] = n > 0
		}
		return nil
	})
	if err != nil {
		return make([]bool, len(outcomes)), err
	}
	return recorded, nil
}

// pruneRevoked deletes the longest-revoked leases first, reading only the
// due index to find them (on SQLite, see pruneBySecond).
func (s leases) pruneRevoked(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	if ds, ok := s.r.s.d.(DueSeconder); ok {
		return s.pruneBySecond(ctx, ds, cutoff, limit)
	}
	return s.pruneExec(ctx, `DELETE FROM leases WHERE id IN (
		SELECT id FROM leases WHERE state = ? AND due_at <= ? ORDER BY due_at, id LIMIT ?)`,
		string(storage.LeaseRevoked), s.r.t(cutoff), limit)
}

// pruneBySecond is pruneRevoked on a store whose due index is keyed by the
// due second: leases revoked in seconds before cutoff's from the index
// alone, then those of cutoff's own second by their exact time (at most
// currentSecondScan read), as claimBySecond does.
func (s leases) pruneBySecond(ctx context.Context, ds DueSeconder, cutoff time.Time, limit int) (int, error) {
	sec, expr, revoked := ds.DueSecond(cutoff), ds.DueSecondExpr(), string(storage.LeaseRevoked)
	n, err := s.pruneExec(ctx, `DELETE FROM leases WHERE rowid IN (
		SELECT rowid FROM leases WHERE state = ? AND `+expr+` < ? ORDER BY `+expr+`, rowid LIMIT ?)`,
		revoked, sec, limit)
	if err != nil || n >= limit {
		return n, err
	}
	m, err := s.pruneExec(ctx, `DELETE FROM leases WHERE rowid IN (
		SELECT rowid FROM (SELECT rowid, due_at FROM leases WHERE state = ? AND `+expr+` = ? ORDER BY rowid LIMIT ?)
		WHERE due_at <= ? LIMIT ?)`,
		revoked, sec, currentSecondScan, s.r.t(cutoff), limit-n)
	return n + m, err
}

// pruneExec runs one prune statement and returns how many it deleted.
func (s leases) pruneExec(ctx context.Context, q string, args ...any) (int, error) {
	const op = "leases: prune revoked"
	res, err := s.r.exec(ctx, q, args...)
	if err != nil {
		return 0, s.r.wrap(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("%s: rows affected: %w", op, err)
	}
	return int(n), nil
}

// PruneRevoked takes the write gate around pruneRevoked.
func (s leases) PruneRevoked(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return writeValue(ctx, s.r, func() (int, error) { return s.pruneRevoked(ctx, cutoff, limit) })
}

// CountActive counts open leases, one state at a time so each count reads
// its own index range (the state as a literal, for the partial index of
// active leases).
func (s leases) CountActive(ctx context.Context, prefix string) (int, error) {
	total := 0
	for _, st := range []storage.LeaseState{storage.LeaseActive, storage.LeasePending} {
		where, args := prefixWhere([]string{"state = '" + string(st) + "'"}, nil, prefix)
		var n int
		err := s.r.queryRow(ctx, `SELECT COUNT(*) FROM leases WHERE `+strings.Join(where, " AND "), args...).Scan(&n)
		if err != nil {
			return 0, s.r.wrap("leases: count active", err)
		}
		total += n
	}
	return total, nil
}

// releaseClaims reads only the partial index leases_claimed, which holds
// the claimed rows and nothing else, so start-up does not scan the table.
func (s leases) releaseClaims(ctx context.Context) (int, error) {
	res, err := s.r.exec(ctx, `UPDATE leases SET claimed_until = NULL, due_at = CASE
			WHEN state <> ? AND state <> ? THEN due_at
			WHEN next_attempt_at > expires_at THEN next_attempt_at
			ELSE expires_at END
		WHERE claimed_until IS NOT NULL`, string(storage.LeaseActive), string(storage.LeasePending))
	if err != nil {
		return 0, s.r.wrap("leases: release claims", err)
	}
	n, err := res.RowsAffected()
	return int(n), s.r.wrap("leases: release claims", err)
}
