package ca

import (
	"context"
	"slices"

	"github.com/sigil-ca/sigil/storage"
)

// Inventory records are group-committed (internal/groupcommit): concurrent
// issuances share one transaction, and every caller gets its certificate
// only after the transaction holding its record has committed. A failing
// batch is retried one record per transaction, so a bad record (a serial
// conflict, an aborted hook) fails only its own issuance.

// maxBatch bounds the records written in one transaction.
const maxBatch = 64

// pendingRecord is one issuance's share of a group commit: its inventory
// row and, if the caller asked, what must commit with it (InRecord,
// InBatch).
type pendingRecord struct {
	rec  *storage.Certificate
	with recordHooks
}

// record stores rec in the inventory (with, if set, running in the same
// transaction) and returns once it is committed (nil) or has failed. If ctx
// ends first the caller gets ctx's error; the record may still commit,
// which leaves a certificate in the inventory that was never returned,
// never the reverse.
func (a *Authority) record(ctx context.Context, rec *storage.Certificate, with recordHooks) error {
	return a.inventory.Do(ctx, &pendingRecord{rec: rec, with: with})
}

// commitRecords writes items in one transaction: every inventory row
// first, then what each issuance asked to commit with its row (InRecord),
// then the shared writes (InBatch), one call per writer. On PostgreSQL the
// hooks (the audit append) lock the audit log's head row; taking it after
// the inserts keeps it held for less of the transaction.
func (a *Authority) commitRecords(ctx context.Context, items []*pendingRecord) error {
	return a.store.InTx(ctx, func(tx storage.Repos) error {
		if err := a.putAll(ctx, tx, items); err != nil {
			return err
		}
		var writers []BatchWriter
		var batches [][]any
		for _, it := range items {
			if it.with.in != nil {
				if err := it.with.in(ctx, tx, it.rec); err != nil {
					return errf(KindInternal, "sign", err, "recording certificate %s: issuance aborted", it.rec.Serial)
				}
			}
			if b := it.with.batch; b != nil {
				i := slices.Index(writers, b.Writer)
				if i < 0 {
					i = len(writers)
					writers = append(writers, b.Writer)
					batches = append(batches, make([]any, 0, len(items)))
				}
				batches[i] = append(batches[i], b.Item)
			}
		}
		for i, w := range writers {
			if err := w.WriteTx(ctx, tx, batches[i]); err != nil {
				if len(items) == 1 {
					return errf(KindInternal, "sign", err, "recording certificate %s: issuance aborted", items[0].rec.Serial)
				}
				return errf(KindInternal, "sign", err, "recording %d certificates: issuance aborted", len(items))
			}
		}
		return nil
	})
}

// putAll writes the items' inventory rows together (a few statements,
// not two per certificate).
func (a *Authority) putAll(ctx context.Context, tx storage.Repos, items []*pendingRecord) error {
	const op = "sign"
	recs := make([]*storage.Certificate, len(items))
	for i, it := range items {
		recs[i] = it.rec
	}
	if err := tx.Certificates().PutBatch(ctx, recs); err != nil {
		if len(recs) == 1 {
			return errf(KindInternal, op, err, "recording certificate %s", recs[0].Serial)
		}
		return errf(KindInternal, op, err, "recording %d certificates", len(recs))
	}
	if a.afterPut != nil {
		for _, rec := range recs {
			if err := a.afterPut(rec); err != nil {
				return errf(KindInternal, op, err, "issuance aborted")
			}
		}
	}
	return nil
}
