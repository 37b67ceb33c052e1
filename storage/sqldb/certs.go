package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

type certs struct{ r repos }

const certCols = `serial, issuer_id, subject, dns_names, ips, uris, emails, not_before, not_after,
	profile, requester, der, status, revoked_at, reason, crl_shard, created_at`

func scanCert(sc rowScanner) (*storage.Certificate, error) {
	var c storage.Certificate
	var status string
	err := sc.Scan(&c.Serial, &c.IssuerID, &c.Subject,
		jsonCol{&c.DNSNames}, jsonCol{&c.IPs}, jsonCol{&c.URIs}, jsonCol{&c.Emails},
		timeCol{&c.NotBefore}, timeCol{&c.NotAfter}, &c.Profile, &c.Requester, &c.DER,
		&status, timeCol{&c.RevokedAt}, &c.Reason, &c.CRLShard, timeCol{&c.CreatedAt})
	if err != nil {
		return nil, err
	}
	c.Status = storage.CertStatus(status)
	return &c, nil
}

// certNames lists the distinct names a certificate is found by: its subject
// and every SAN.
func certNames(c *storage.Certificate) []string {
	seen := make(map[string]bool)
	var out []string
	add := func(ns ...string) {
		for _, n := range ns {
			if n != "" && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	add(c.Subject)
	add(c.DNSNames...)
	add(c.IPs...)
	add(c.URIs...)
	add(c.Emails...)
	sort.Strings(out)
	return out
}

// Put records a new certificate and its names in one transaction. A zero
// CreatedAt is set to now and an empty Status to valid, in c too.
func (s certs) Put(ctx context.Context, c *storage.Certificate) error {
	return s.PutBatch(ctx, []*storage.Certificate{c})
}

// PutBatch records new certificates and their names in one transaction,
// with multi-row inserts. Defaults are set as by Put.
func (s certs) PutBatch(ctx context.Context, cs []*storage.Certificate) error {
	const op = "certificates: put"
	rows := make([][]any, 0, len(cs))
	var names [][]any
	for _, c := range cs {
		if c.CreatedAt.IsZero() {
			c.CreatedAt = now()
		}
		if c.Status == "" {
			c.Status = storage.CertValid
		}
		lists := make([]any, 4)
		for i, l := range [][]string{c.DNSNames, c.IPs, c.URIs, c.Emails} {
			j, err := jsonText(l)
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			lists[i] = j
		}
		rows = append(rows, []any{c.Serial, c.IssuerID, c.Subject, lists[0], lists[1], lists[2], lists[3],
			s.r.t(c.NotBefore), s.r.t(c.NotAfter), c.Profile, c.Requester, c.DER,
			string(c.Status), s.r.t(c.RevokedAt), c.Reason, c.CRLShard, s.r.t(c.CreatedAt)})
		for _, n := range certNames(c) {
			names = append(names, []any{n, c.Serial})
		}
	}
	return s.r.atomic(ctx, func(r repos) error {
		if err := r.insertRows(ctx, op, "certificates", certCols, rows, true); err != nil {
			return err
		}
		return r.insertRows(ctx, op+" names", "cert_names", "name, serial", names, false)
	})
}

func (s certs) Get(ctx context.Context, serial string) (*storage.Certificate, error) {
	c, err := scanCert(s.r.queryRow(ctx, `SELECT `+certCols+` FROM certificates WHERE serial = ?`, serial))
	if err != nil {
		return nil, s.r.wrap("certificates: get "+serial, err)
	}
	return c, nil
}

func (s certs) List(ctx context.Context, f storage.CertFilter) ([]*storage.Certificate, string, error) {
	const op = "certificates: list"
	var where []string
	var args []any
	if f.Name != "" {
		where = append(where, "serial IN (SELECT serial FROM cert_names WHERE name = ?)")
		args = append(args, f.Name)
	}
	if f.IssuerID != "" {
		where = append(where, "issuer_id = ?")
		args = append(args, f.IssuerID)
	}
	if !f.ExpiringBefore.IsZero() {
		where = append(where, "not_after < ?")
		args = append(args, s.r.t(f.ExpiringBefore))
	}
	if !f.ValidAt.IsZero() {
		where = append(where, "not_after >= ?")
		args = append(args, s.r.t(f.ValidAt))
	}
	if f.RevokedOnly {
		// A literal, not a parameter: the revoked-only indexes are partial
		// (WHERE status = 'revoked') and a planner uses a partial index
		// only when the query's condition is that same constant.
		where = append(where, "status = '"+string(storage.CertRevoked)+"'")
	}
	if f.CRLShard != nil {
		where = append(where, "crl_shard = ?")
		args = append(args, *f.CRLShard)
	}
	out, next, err := queryPage(ctx, s.r, keysetPage{
		selectFrom: `SELECT ` + certCols + ` FROM certificates`,
		where:      where, args: args, key: "serial", after: f.After, limit: f.Limit,
	}, scanCert, func(c *storage.Certificate) string { return c.Serial })
	if err != nil {
		return nil, "", s.r.wrap(op, err)
	}
	return out, next, nil
}

// revoke marks a valid certificate revoked. The status condition makes a
// second revocation a no-op, so the first time and reason stay.
func (s certs) revoke(ctx context.Context, serial string, reason int, at time.Time) error {
	op := "certificates: revoke " + serial
	if at.IsZero() {
		at = now()
	}
	res, err := s.r.exec(ctx, `UPDATE certificates SET status = ?, revoked_at = ?, reason = ?
		WHERE serial = ? AND status <> ?`,
		string(storage.CertRevoked), s.r.t(at), reason, serial, string(storage.CertRevoked))
	if err != nil {
		return s.r.wrap(op, err)
	}
	if err := affected(op, res); !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	var one int
	err = s.r.queryRow(ctx, `SELECT 1 FROM certificates WHERE serial = ?`, serial).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", op, storage.ErrNotFound)
	}
	if err != nil {
		return s.r.wrap(op, err)
	}
	return fmt.Errorf("%s: already revoked: %w", op, storage.ErrConflict)
}

// pruneExpired deletes the oldest expired certificates first; cert_names
// rows go with them through ON DELETE CASCADE.
func (s certs) pruneExpired(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	const op = "certificates: prune expired"
	if limit <= 0 {
		return 0, nil
	}
	res, err := s.r.exec(ctx, `DELETE FROM certificates WHERE serial IN (
		SELECT serial FROM certificates WHERE not_after < ? ORDER BY not_after LIMIT ?)`,
		s.r.t(cutoff), limit)
	if err != nil {
		return 0, s.r.wrap(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("%s: rows affected: %w", op, err)
	}
	return int(n), nil
}
