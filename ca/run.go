package ca

import (
	"context"
	"time"

	"golang.org/x/sync/errgroup"
)

// pruneInterval is how often Run prunes expired certificates.
const pruneInterval = time.Hour

// OnceFunc runs fn on one node of a cluster sharing the database at a time
// until ctx ends (cluster.Node.Singleton; core.Wiring.Once).
type OnceFunc func(ctx context.Context, name string, fn func(context.Context) error) error

// Singleton names of the CA's background work.
const (
	SingletonCRL   = "ca-crl"
	SingletonPrune = "ca-prune"
)

// Run does the Authority's background work until ctx ends, each part under
// once so that one node of a cluster does it (nil once: here): it
// regenerates stored shard CRLs a moment (crlDebounce) after revocations
// and before their nextUpdate, and prunes expired certificates. Serving
// does not depend on it (CRLInfo regenerates a stale CRL on demand); it
// keeps stored CRLs fresh for front ends and caches in front of them. It
// returns ctx's error.
func (a *Authority) Run(ctx context.Context, once OnceFunc) error {
	if once == nil {
		once = func(ctx context.Context, _ string, fn func(context.Context) error) error { return fn(ctx) }
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return once(ctx, SingletonCRL, a.runCRLs) })
	g.Go(func() error { return once(ctx, SingletonPrune, a.runPrune) })
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// runCRLs refreshes stored CRLs every crlDebounce, comparing their revoked
// sets with the inventory every crlRecheck.
func (a *Authority) runCRLs(ctx context.Context) error {
	tick := time.NewTicker(crlDebounce)
	defer tick.Stop()
	lastCheck := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		recheck := time.Since(lastCheck) >= crlRecheck
		if recheck {
			lastCheck = time.Now()
		}
		a.refreshCRLs(ctx, recheck)
	}
}

// runPrune prunes expired certificates at once and then every
// pruneInterval.
func (a *Authority) runPrune(ctx context.Context) error {
	tick := time.NewTicker(pruneInterval)
	defer tick.Stop()
	for {
		a.log.Debug("ca: pruning expired certificates")
		if _, err := a.PruneExpired(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("ca: prune failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
