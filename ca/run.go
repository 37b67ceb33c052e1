package ca

import (
	"context"
	"time"
)

// pruneInterval is how often Run prunes expired certificates.
const pruneInterval = time.Hour

// Run does the Authority's background work until ctx ends: it regenerates
// shard CRLs a moment (crlDebounce) after revocations and before their
// nextUpdate, and prunes expired certificates. Serving does not depend on
// it (CRL and OCSP regenerate on demand); it keeps cached CRLs fresh for
// front ends and caches in front of them. It returns ctx's error.
func (a *Authority) Run(ctx context.Context) error {
	tick := time.NewTicker(crlDebounce)
	defer tick.Stop()
	lastPrune := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		a.refreshCRLs(ctx)
		if time.Since(lastPrune) >= pruneInterval {
			lastPrune = time.Now()
			if _, err := a.PruneExpired(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("ca: prune failed", "err", err)
			}
		}
	}
}
