package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

func (r repos) ACME() storage.ACME { return acmeRepo{r} }

// acmeRepo stores ACME objects (opaque data plus lookup columns) and nonces.
type acmeRepo struct{ r repos }

const acmeCols = `kind, id, provisioner, account_id, lookup_key, ref, status, expires_at, version, data, created_at`

func scanACME(sc rowScanner) (*storage.ACMEObject, error) {
	var o storage.ACMEObject
	var lookup sql.NullString
	if err := sc.Scan(&o.Kind, &o.ID, &o.Provisioner, &o.AccountID, &lookup, &o.Ref, &o.Status,
		timeCol{&o.ExpiresAt}, &o.Version, &o.Data, timeCol{&o.CreatedAt}); err != nil {
		return nil, err
	}
	o.LookupKey = lookup.String
	return &o, nil
}

// lookupArg stores an empty lookup key as NULL so the unique index skips it.
func lookupArg(k string) any {
	if k == "" {
		return nil
	}
	return k
}

func dataArg(b []byte) []byte {
	if b == nil {
		return []byte{} // NOT NULL column; nil would bind as NULL
	}
	return b
}

func (s acmeRepo) put(ctx context.Context, o *storage.ACMEObject) error {
	op := "acme: put " + o.Kind + " " + o.ID
	if o.Kind == "" || o.ID == "" {
		return fmt.Errorf("%s: kind and id are required", op)
	}
	if o.CreatedAt.IsZero() {
		o.CreatedAt = now()
	}
	if err := s.r.insert(ctx, op, `INSERT INTO acme_objects (`+acmeCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		o.Kind, o.ID, o.Provisioner, o.AccountID, lookupArg(o.LookupKey), o.Ref, o.Status,
		s.r.t(o.ExpiresAt), int64(1), dataArg(o.Data), s.r.t(o.CreatedAt)); err != nil {
		return err
	}
	o.Version = 1
	return nil
}

func (s acmeRepo) Get(ctx context.Context, kind, id string) (*storage.ACMEObject, error) {
	o, err := scanACME(s.r.queryRow(ctx, `SELECT `+acmeCols+` FROM acme_objects WHERE kind = ? AND id = ?`, kind, id))
	if err != nil {
		return nil, s.r.wrap("acme: get "+kind+" "+id, err)
	}
	return o, nil
}

func (s acmeRepo) GetByLookupKey(ctx context.Context, kind, provisioner, key string) (*storage.ACMEObject, error) {
	op := "acme: get " + kind + " by lookup key"
	if key == "" {
		return nil, fmt.Errorf("%s: empty key: %w", op, storage.ErrNotFound)
	}
	o, err := scanACME(s.r.queryRow(ctx, `SELECT `+acmeCols+` FROM acme_objects
		WHERE kind = ? AND provisioner = ? AND lookup_key = ?`, kind, provisioner, key))
	if err != nil {
		return nil, s.r.wrap(op, err)
	}
	return o, nil
}

func (s acmeRepo) update(ctx context.Context, o *storage.ACMEObject) error {
	op := "acme: update " + o.Kind + " " + o.ID
	res, err := s.r.exec(ctx, `UPDATE acme_objects SET lookup_key = ?, ref = ?, status = ?, expires_at = ?,
		data = ?, version = version + 1 WHERE kind = ? AND id = ? AND version = ?`,
		lookupArg(o.LookupKey), o.Ref, o.Status, s.r.t(o.ExpiresAt), dataArg(o.Data), o.Kind, o.ID, o.Version)
	if err := s.r.casResult(ctx, op, res, err, `SELECT 1 FROM acme_objects WHERE kind = ? AND id = ?`, o.Kind, o.ID); err != nil {
		return err
	}
	o.Version++
	return nil
}

func (s acmeRepo) List(ctx context.Context, f storage.ACMEFilter) ([]*storage.ACMEObject, error) {
	op := "acme: list " + f.Kind
	where, args, err := acmeWhere(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if f.After != "" {
		where += " AND id > ?"
		args = append(args, f.After)
	}
	args = append(args, clampLimit(f.Limit))
	out, err := queryAll(ctx, s.r, scanACME, `SELECT `+acmeCols+` FROM acme_objects WHERE `+where+` ORDER BY id LIMIT ?`, args...)
	return out, s.r.wrap(op, err)
}

func (s acmeRepo) CountUnexpired(ctx context.Context, f storage.ACMEFilter, now time.Time) (int, time.Time, error) {
	op := "acme: count " + f.Kind
	where, args, err := acmeWhere(f)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("%s: %w", op, err)
	}
	// Only equality in WHERE (the expiry is tested in the aggregates), and
	// no ORDER BY: SQLite plans without statistics, and would otherwise
	// walk an index by expiry or id instead of searching the one keyed by
	// status (acme_objects_account_status).
	var n sql.NullInt64
	var first time.Time
	t := s.r.t(now)
	err = s.r.queryRow(ctx, `SELECT SUM(CASE WHEN expires_at > ? THEN 1 ELSE 0 END), MIN(CASE WHEN expires_at > ? THEN expires_at END)
		FROM acme_objects WHERE `+where, append([]any{t, t}, args...)...).Scan(&n, timeCol{&first})
	return int(n.Int64), first, s.r.wrap(op, err)
}

// acmeWhere is the WHERE clause (and its arguments) of f's equality
// filters.
func acmeWhere(f storage.ACMEFilter) (string, []any, error) {
	if f.Kind == "" {
		return "", nil, errors.New("kind is required")
	}
	where := []string{"kind = ?"}
	args := []any{f.Kind}
	for _, c := range []struct{ col, v string }{{"provisioner", f.Provisioner}, {"account_id", f.AccountID}, {"ref", f.Ref}, {"status", f.Status}} {
		if c.v != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.v)
		}
	}
	return strings.Join(where, " AND "), args, nil
}

func rowsAffected(op string, res sql.Result) (int, error) {
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("%s: rows affected: %w", op, err)
	}
	return int(n), nil
}

func (s acmeRepo) pruneExpired(ctx context.Context, kind string, cutoff time.Time, limit int) (int, error) {
	op := "acme: prune expired " + kind
	if limit <= 0 {
		return 0, nil
	}
	res, err := s.r.exec(ctx, `DELETE FROM acme_objects WHERE kind = ? AND id IN (
		SELECT id FROM acme_objects WHERE kind = ? AND expires_at IS NOT NULL AND expires_at < ?
		ORDER BY expires_at LIMIT ?)`, kind, kind, s.r.t(cutoff), limit)
	if err != nil {
		return 0, s.r.wrap(op, err)
	}
	return rowsAffected(op, res)
}

func (s acmeRepo) putNonce(ctx context.Context, nonce string, expiresAt time.Time) error {
	return s.r.insert(ctx, "acme: put nonce", `INSERT INTO acme_nonces (nonce, expires_at) VALUES (?, ?)`,
		nonce, s.r.t(expiresAt))
}

func (s acmeRepo) pruneNonces(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	const op = "acme: prune nonces"
	if limit <= 0 {
		return 0, nil
	}
	res, err := s.r.exec(ctx, `DELETE FROM acme_nonces WHERE nonce IN (
		SELECT nonce FROM acme_nonces WHERE expires_at < ? ORDER BY expires_at LIMIT ?)`, s.r.t(cutoff), limit)
	if err != nil {
		return 0, s.r.wrap(op, err)
	}
	return rowsAffected(op, res)
}

// Gate wrappers (see gate.go).

func (s acmeRepo) Put(ctx context.Context, o *storage.ACMEObject) error {
	return s.r.write(ctx, func() error { return s.put(ctx, o) })
}

func (s acmeRepo) Update(ctx context.Context, o *storage.ACMEObject) error {
	return s.r.write(ctx, func() error { return s.update(ctx, o) })
}

func (s acmeRepo) PruneExpired(ctx context.Context, kind string, cutoff time.Time, limit int) (int, error) {
	return writeValue(ctx, s.r, func() (int, error) { return s.pruneExpired(ctx, kind, cutoff, limit) })
}

func (s acmeRepo) PutNonce(ctx context.Context, nonce string, expiresAt time.Time) error {
	return s.r.write(ctx, func() error { return s.putNonce(ctx, nonce, expiresAt) })
}

func (s acmeRepo) PruneNonces(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	return writeValue(ctx, s.r, func() (int, error) { return s.pruneNonces(ctx, cutoff, limit) })
}
