package sqldb

import (
	"context"
	"fmt"

	"github.com/sigil-ca/sigil/storage"
)

// CRLs returns the stored CRLs.
func (r repos) CRLs() storage.CRLs { return crls{r} }

type crls struct{ r repos }

const crlHeadCols = `issuer_id, shard, number, this_update, next_update, fingerprint, revision, built`

func scanCRLHead(sc rowScanner) (*storage.CRL, error) {
	var c storage.CRL
	err := sc.Scan(&c.IssuerID, &c.Shard, &c.Number, timeCol{&c.ThisUpdate}, timeCol{&c.NextUpdate}, &c.Fingerprint, &c.Revision, &c.Built)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

func (s crls) Head(ctx context.Context, issuerID string, shard int) (*storage.CRL, error) {
	c, err := scanCRLHead(s.r.queryRow(ctx, `SELECT `+crlHeadCols+` FROM crls WHERE issuer_id = ? AND shard = ?`, issuerID, shard))
	if err != nil {
		return nil, s.r.wrap(fmt.Sprintf("crls: head %s/%d", issuerID, shard), err)
	}
	return c, nil
}

func (s crls) Get(ctx context.Context, issuerID string, shard int) (*storage.CRL, error) {
	var c storage.CRL
	err := s.r.queryRow(ctx, `SELECT `+crlHeadCols+`, der FROM crls WHERE issuer_id = ? AND shard = ?`, issuerID, shard).
		Scan(&c.IssuerID, &c.Shard, &c.Number, timeCol{&c.ThisUpdate}, timeCol{&c.NextUpdate}, &c.Fingerprint, &c.Revision, &c.Built, &c.DER)
	if err != nil {
		return nil, s.r.wrap(fmt.Sprintf("crls: get %s/%d", issuerID, shard), err)
	}
	return &c, nil
}

func (s crls) List(ctx context.Context) ([]*storage.CRL, error) {
	out, err := queryAll(ctx, s.r, scanCRLHead, `SELECT `+crlHeadCols+` FROM crls ORDER BY issuer_id, shard`)
	return out, s.r.wrap("crls: list", err)
}

func (s crls) Touch(ctx context.Context, issuerID string, shard int) error {
	return s.r.write(ctx, func() error {
		_, err := s.r.exec(ctx, `INSERT INTO crls (issuer_id, shard, number, revision, built) VALUES (?, ?, 0, 1, 0)
			ON CONFLICT (issuer_id, shard) DO UPDATE SET revision = crls.revision + 1`, issuerID, shard)
		return s.r.wrap(fmt.Sprintf("crls: touch %s/%d", issuerID, shard), err)
	})
}

// Put's WHERE makes the number check and the write one statement, so two
// writers can never store numbers out of order.
func (s crls) Put(ctx context.Context, c *storage.CRL) error {
	op := fmt.Sprintf("crls: put %s/%d #%d", c.IssuerID, c.Shard, c.Number)
	if c.Number <= 0 {
		return fmt.Errorf("%s: CRL number must be positive", op)
	}
	return s.r.write(ctx, func() error {
		res, err := s.r.exec(ctx, `INSERT INTO crls (issuer_id, shard, number, this_update, next_update, der, fingerprint, revision, built)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (issuer_id, shard) DO UPDATE SET number = excluded.number, this_update = excluded.this_update,
				next_update = excluded.next_update, der = excluded.der, fingerprint = excluded.fingerprint, built = excluded.built
			WHERE crls.number < excluded.number`,
			c.IssuerID, c.Shard, c.Number, s.r.t(c.ThisUpdate), s.r.t(c.NextUpdate), c.DER, c.Fingerprint, c.Built, c.Built)
		if err != nil {
			return s.r.wrap(op, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("%s: rows affected: %w", op, err)
		}
		if n == 0 {
			return fmt.Errorf("%s: a CRL with this or a higher number is stored: %w", op, storage.ErrConflict)
		}
		return nil
	})
}
