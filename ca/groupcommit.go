package ca

import (
	"context"

	"github.com/sigil-ca/sigil/storage"
)

// Inventory records are group-committed (internal/groupcommit): concurrent
// issuances share one transaction, and every caller gets its certificate
// only after the transaction holding its record has committed. A failing
// batch is retried one record per transaction, so a bad record (a serial
// conflict, an aborted hook) fails only its own issuance.

// maxBatch bounds the records written in one transaction.
const maxBatch = 64

// record stores rec in the inventory and returns once it is committed (nil)
// or has failed. If ctx ends first the caller gets ctx's error; the record
// may still commit, which leaves a certificate in the inventory that was
// never returned, never the reverse.
func (a *Authority) record(ctx context.Context, rec *storage.Certificate) error {
	return a.inventory.Do(ctx, rec)
}

// commitRecords writes recs in one transaction.
func (a *Authority) commitRecords(ctx context.Context, recs []*storage.Certificate) error {
	return a.store.InTx(ctx, func(tx storage.Repos) error {
		for _, rec := range recs {
			if err := a.put(ctx, tx, rec); err != nil {
				return err
			}
		}
		return nil
	})
}

func (a *Authority) put(ctx context.Context, tx storage.Repos, rec *storage.Certificate) error {
	const op = "sign"
	if err := tx.Certificates().Put(ctx, rec); err != nil {
		return errf(KindInternal, op, err, "recording certificate %s", rec.Serial)
	}
	if a.afterPut != nil {
		if err := a.afterPut(rec); err != nil {
			return errf(KindInternal, op, err, "issuance aborted")
		}
	}
	return nil
}
