package lease_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// hangingEngine is the test engine whose Configure, once hang is set,
// waits until its context ends: a database that does not answer.
type hangingEngine struct {
	testEngine
	hang *atomic.Bool
}

func (e *hangingEngine) Configure(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	if e.hang.Load() {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return e.testEngine.Configure(ctx, cfg)
}

// TestSlowMountDoesNotStallExpiry: after a restart (no engine built yet),
// one mount whose backend does not answer while its engine is built fails
// its own leases' attempts; the other mounts' due leases in the same
// batches are revoked. Before, the worker waited for that engine without
// a deadline: every batch passed its start deadline, was released
// unattempted, and was claimed again, so no lease of any mount expired
// and nothing was logged or counted.
func TestSlowMountDoesNotStallExpiry(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hang := &atomic.Bool{}
	if err := e.reg.Register("hanging", func(engines.Env) (engines.Engine, error) {
		return &hangingEngine{testEngine: testEngine{e.b2}, hang: hang}, nil
	}); err != nil {
		t.Fatal(err)
	}
	e.mount("db", "test", map[string]map[string]string{"r": {"ttl": "1m"}})
	e.mount("slow", "hanging", map[string]map[string]string{"r": {"ttl": "1m"}})
	if err := e.mounts.Configure(ctx, "slow", map[string]string{"dsn": "unanswered"}); err != nil {
		t.Fatal(err)
	}
	m := e.manager(nil)
	fast := mintN(t, m, "db", "r", 3)
	slow := mintN(t, m, "slow", "r", 3)
	m.Stop()

	// Restart: engines are built on first use, and the slow mount's
	// backend no longer answers.
	e.open()
	hang.Store(true)
	e.clock.Add(2 * time.Minute) // every lease is due
	m = e.manager(func(c *lease.Config) { c.RevokeTimeout = 2 * time.Second; c.ClaimTimeout = 10 * time.Second })
	m.Start(ctx)
	waitFor(t, 10*time.Second, "the db mount's leases to expire", func() bool { return e.b.count() == 0 })
	for _, mt := range fast {
		waitFor(t, 5*time.Second, "expiry recorded", func() bool { return state(t, m, mt.Lease.ID) == storage.LeaseRevoked })
	}
	// The slow mount's leases failed an attempt each, saying why, and are
	// retried with backoff; their credentials are still there.
	for _, mt := range slow {
		waitFor(t, 5*time.Second, "a failed attempt recorded", func() bool {
			l, err := m.Lookup(ctx, mt.Lease.ID)
			return err == nil && l.Attempts > 0
		})
		l, err := m.Lookup(ctx, mt.Lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(l.LastError, "slow") || !strings.Contains(l.LastError, "deadline") {
			t.Errorf("last error %q, want it to name the mount and the deadline", l.LastError)
		}
	}
	if n := e.b2.count(); n != 3 {
		t.Errorf("%d credentials of the slow mount left, want 3 (not revoked yet)", n)
	}
}
