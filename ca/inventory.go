package ca

import (
	"context"
	"errors"

	"github.com/sigil-ca/sigil/storage"
)

// List returns inventory records matching f, ordered by serial, and the
// cursor for the next page ("" at the end).
func (a *Authority) List(ctx context.Context, f storage.CertFilter) ([]*storage.Certificate, string, error) {
	list, next, err := a.store.Certificates().List(ctx, f)
	if err != nil {
		return nil, "", errf(KindInternal, "list", err, "listing certificates")
	}
	return list, next, nil
}

// Get returns one certificate's record by serial (hex).
func (a *Authority) Get(ctx context.Context, serial string) (*storage.Certificate, error) {
	s, err := ParseSerial(serial)
	if err != nil {
		return nil, err
	}
	rec, err := a.store.Certificates().Get(ctx, s)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, errf(KindNotFound, "get", err, "no certificate with serial %s", s)
	} else if err != nil {
		return nil, errf(KindInternal, "get", err, "looking up %s", s)
	}
	return rec, nil
}

// PruneExpired deletes certificates that expired more than PruneGrace ago,
// PruneBatch per transaction so the database is never locked for long, and
// returns how many it deleted.
func (a *Authority) PruneExpired(ctx context.Context) (int, error) {
	cutoff := a.now().Add(-a.cfg.PruneGrace)
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := a.store.Certificates().PruneExpired(ctx, cutoff, a.cfg.PruneBatch)
		total += n
		if err != nil {
			return total, errf(KindInternal, "prune", err, "pruning expired certificates")
		}
		if n < a.cfg.PruneBatch {
			if total > 0 {
				a.log.Info("ca: pruned expired certificates", "count", total, "cutoff", cutoff)
			}
			return total, nil
		}
	}
}
