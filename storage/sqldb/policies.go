package sqldb

import (
	"bytes"
	"context"
	"fmt"

	"github.com/sigil-ca/sigil/storage"
)

func (r repos) Policies() storage.Policies { return policies{r} }
func (r repos) Audit() storage.AuditLog    { return auditLog{r} }

// ---- policies

type policies struct{ r repos }

func (s policies) put(ctx context.Context, name string, document []byte) error {
	if document == nil {
		document = []byte{} // the column is NOT NULL; nil would bind as NULL
	}
	_, err := s.r.exec(ctx, `INSERT INTO policies (name, document) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET document = excluded.document`, name, document)
	return s.r.wrap("policies: put "+name, err)
}

func (s policies) Get(ctx context.Context, name string) ([]byte, error) {
	var doc []byte
	if err := s.r.queryRow(ctx, `SELECT document FROM policies WHERE name = ?`, name).Scan(&doc); err != nil {
		return nil, s.r.wrap("policies: get "+name, err)
	}
	return doc, nil
}

func (s policies) List(ctx context.Context) (map[string][]byte, error) {
	const op = "policies: list"
	rows, err := s.r.query(ctx, `SELECT name, document FROM policies ORDER BY name`)
	if err != nil {
		return nil, s.r.wrap(op, err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var name string
		var doc []byte
		if err := rows.Scan(&name, &doc); err != nil {
			return nil, s.r.wrap(op, err)
		}
		out[name] = doc
	}
	return out, s.r.wrap(op, rows.Err())
}

func (s policies) delete(ctx context.Context, name string) error {
	return s.r.execOne(ctx, "policies: delete "+name, `DELETE FROM policies WHERE name = ?`, name)
}

// ---- audit log

type auditLog struct{ r repos }

const auditCols = `seq, time, prev_hash, hash, record`

// appendBatch serialises writers on the head row rather than on the log
// table: the first statement is an UPDATE, so on PostgreSQL it takes the
// row lock (held to commit) before the head is read, and a concurrent
// appender on another node blocks there and then re-reads the head its
// predecessor committed (READ COMMITTED re-evaluates the updated row). No
// dialect-specific FOR UPDATE is needed. The head is read and moved once
// for the whole batch: the UPDATE reserves len(builds) sequence numbers and
// the last record's hash is written at the end. The primary key on seq is a
// second line of defence: a fork of the chain can never be stored.
func (s auditLog) appendBatch(ctx context.Context, builds []func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error)) error {
	const op = "audit: append"
	if len(builds) == 0 {
		return nil
	}
	return s.r.atomic(ctx, func(r repos) error {
		var last int64
		var prevHash []byte
		err := r.queryRow(ctx, `UPDATE audit_head SET seq = seq + ? WHERE id = 1 RETURNING seq, hash`, int64(len(builds))).Scan(&last, &prevHash)
		if err != nil {
			return r.wrap(op+": lock head", err)
		}
		prevSeq := last - int64(len(builds))
		// Built one after another (each record's hash chains to the one
		// before), then inserted together.
		rows := make([][]any, 0, len(builds))
		for _, build := range builds {
			rec, err := build(prevSeq, bytes.Clone(prevHash))
			if err != nil {
				return err
			}
			if rec == nil {
				return fmt.Errorf("%s: build returned no record", op)
			}
			if rec.Seq != prevSeq+1 || !bytes.Equal(rec.PrevHash, prevHash) {
				return fmt.Errorf("%s: record seq %d does not follow head %d: %w", op, rec.Seq, prevSeq, storage.ErrConflict)
			}
			if len(rec.Hash) == 0 {
				return fmt.Errorf("%s: record %d has no hash", op, rec.Seq)
			}
			if rec.Time.IsZero() {
				rec.Time = now()
			}
			prev := rec.PrevHash
			if prev == nil {
				prev = []byte{}
			}
			rows = append(rows, []any{rec.Seq, r.t(rec.Time), prev, rec.Hash, rec.Record})
			prevSeq, prevHash = rec.Seq, rec.Hash
		}
		if err := r.insertRows(ctx, op, "audit_log", auditCols, rows, true); err != nil {
			return err
		}
		_, err = r.exec(ctx, `UPDATE audit_head SET hash = ? WHERE id = 1`, prevHash)
		return r.wrap(op+": move head", err)
	})
}

func (s auditLog) List(ctx context.Context, afterSeq int64, limit int) ([]*storage.AuditRecord, error) {
	const op = "audit: list"
	rows, err := s.r.query(ctx, `SELECT `+auditCols+` FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?`,
		afterSeq, clampLimit(limit))
	if err != nil {
		return nil, s.r.wrap(op, err)
	}
	defer rows.Close()
	var out []*storage.AuditRecord
	for rows.Next() {
		var a storage.AuditRecord
		if err := rows.Scan(&a.Seq, timeCol{&a.Time}, &a.PrevHash, &a.Hash, &a.Record); err != nil {
			return nil, s.r.wrap(op, err)
		}
		out = append(out, &a)
	}
	return out, s.r.wrap(op, rows.Err())
}

func (s auditLog) Head(ctx context.Context) (int64, []byte, error) {
	var seq int64
	var hash []byte
	if err := s.r.queryRow(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`).Scan(&seq, &hash); err != nil {
		return 0, nil, s.r.wrap("audit: head", err)
	}
	return seq, hash, nil
}

// Gate wrappers (see gate.go). Append and AppendBatch need none: atomic
// opens a transaction, which takes the gate itself.

func (s policies) Put(ctx context.Context, name string, document []byte) error {
	return s.r.write(ctx, func() error { return s.put(ctx, name, document) })
}

func (s policies) Delete(ctx context.Context, name string) error {
	return s.r.write(ctx, func() error { return s.delete(ctx, name) })
}

func (s auditLog) Append(ctx context.Context, build func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error)) error {
	return s.appendBatch(ctx, []func(int64, []byte) (*storage.AuditRecord, error){build})
}

func (s auditLog) AppendBatch(ctx context.Context, builds []func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error)) error {
	return s.appendBatch(ctx, builds)
}
