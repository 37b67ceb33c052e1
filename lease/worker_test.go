package lease_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// gatedEngine is the test engine with revocations that take time: each
// waits for delay, or until gate is closed when gate is set (only the
// first gateCalls calls, if that is non-zero), and honours its context. It
// records how many run at once.
type gatedEngine struct {
	testEngine
	delay             time.Duration
	gate              chan struct{}
	gateCalls         int32
	started           atomic.Int32
	inFlight, maxSeen atomic.Int32
}

func (g *gatedEngine) Revoke(ctx context.Context, rev []byte) error {
	call := g.started.Add(1)
	if g.gate != nil && g.gateCalls > 0 && call > g.gateCalls {
		return g.testEngine.Revoke(ctx, rev)
	}
	n := g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	for {
		m := g.maxSeen.Load()
		if n <= m || g.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	wait := g.gate
	if wait == nil {
		t := time.NewTimer(g.delay)
		defer t.Stop()
		c := make(chan struct{})
		go func() {
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			close(c)
		}()
		wait = c
	}
	select {
	case <-wait:
	case <-ctx.Done():
		return ctx.Err()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return g.testEngine.Revoke(ctx, rev)
}

func (e *env) gated(path string, g *gatedEngine, roles map[string]map[string]string) {
	e.t.Helper()
	g.b = e.b
	e.mountEngine(path, g, roles)
}

// mountEngine mounts path with eng, an engine the test made, registered
// under a type of its own.
func (e *env) mountEngine(path string, eng engines.Engine, roles map[string]map[string]string) {
	e.t.Helper()
	typ := "custom-" + path
	if err := e.reg.Register(typ, func(engines.Env) (engines.Engine, error) { return eng, nil }); err != nil {
		e.t.Fatal(err)
	}
	e.mount(path, typ, roles)
}

// mintN mints n leases under mount/role.
func mintN(t *testing.T, m *lease.Manager, mount, role string, n int) []*lease.Minted {
	t.Helper()
	out := make([]*lease.Minted, n)
	for i := range out {
		got, err := m.Mint(context.Background(), lease.MintRequest{Mount: mount, Role: role})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = got
	}
	return out
}

// A batch is revoked with at most Concurrency revocations in flight, and
// every outcome lands.
func TestExpiryBoundedConcurrency(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := &gatedEngine{delay: 20 * time.Millisecond}
	e.gated("db", g, map[string]map[string]string{"r": {"ttl": "50ms"}})
	m := e.manager(func(c *lease.Config) { c.BatchSize, c.Concurrency = 40, 3 })
	mintN(t, m, "db", "r", 40)
	m.Start(ctx)
	waitFor(t, 10*time.Second, "all expired", func() bool { return m.Stats().Expired == 40 })
	if got := g.maxSeen.Load(); got > 3 || got < 2 {
		t.Errorf("%d revocations in flight at most, want 2..3 with Concurrency 3", got)
	}
	if n := e.b.count(); n != 0 {
		t.Errorf("%d credentials left", n)
	}
	if n, err := e.store.Leases().CountActive(ctx, ""); err != nil || n != 0 {
		t.Errorf("active leases %d, %v", n, err)
	}
}

// A revocation starts only while the claim leaves it time to finish: with a
// short claim and slow revocations, the worker releases the rest of its
// batch instead of revoking under a lapsed claim, and no lease is revoked
// twice even with a second node taking up released leases.
func TestExpiryNeverOutlivesClaim(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := &gatedEngine{delay: 60 * time.Millisecond}
	e.gated("db", g, map[string]map[string]string{"r": {"ttl": "50ms"}})
	short := func(c *lease.Config) {
		c.BatchSize, c.Concurrency = 20, 1
		c.RevokeTimeout, c.ClaimTimeout = 100*time.Millisecond, 400*time.Millisecond
	}
	m1, m2 := e.manager(short), e.manager(short)
	const n = 20
	mintN(t, m1, "db", "r", n)
	e.clock.Add(time.Second) // past the 50ms TTL
	m1.Start(ctx)
	m2.Start(ctx)
	waitFor(t, 20*time.Second, "all expired", func() bool { return m1.Stats().Expired+m2.Stats().Expired == n })
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	for u, c := range e.b.revokes {
		if c != 1 {
			t.Errorf("%s revoked %d times", u, c)
		}
	}
	// Every start beyond one per lease must be a retry of an attempt that
	// failed (on a loaded machine a 60 ms revocation can outlast its 100 ms
	// RevokeTimeout), never a second node revoking under a live claim.
	retries := int32(m1.Stats().Failures + m2.Stats().Failures)
	if s := g.started.Load(); s < n || s > n+retries {
		t.Errorf("%d revocations started for %d leases (%d failed attempts retried)", s, n, retries)
	}
}

// Stop interrupts revocations in flight and releases their claims, so the
// next manager (a restart on PostgreSQL, where claims are not dropped at
// start) revokes them at once instead of after ClaimTimeout.
func TestStopReleasesClaims(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := &gatedEngine{gate: make(chan struct{})}
	e.gated("db", g, map[string]map[string]string{"r": {"ttl": "50ms"}})
	m := e.manager(func(c *lease.Config) { c.ClaimTimeout = time.Hour })
	minted := mintN(t, m, "db", "r", 3)
	e.clock.Add(time.Second) // past the 50ms TTL
	m.Start(ctx)
	waitFor(t, 5*time.Second, "revocations in flight", func() bool { return g.inFlight.Load() == 3 })
	m.Stop()
	for _, x := range minted {
		l, err := e.store.Leases().Get(ctx, x.Lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		if l.State != storage.LeaseActive || !l.ClaimedUntil.IsZero() || l.Attempts != 0 {
			t.Fatalf("after stop: %+v", l)
		}
	}
	close(g.gate)
	m2 := e.manager(func(c *lease.Config) { c.ClaimTimeout = time.Hour })
	m2.Start(ctx)
	waitFor(t, 5*time.Second, "revoked by the next manager", func() bool { return m2.Stats().Expired == 3 })
}

// Revoked leases are pruned once RevokedRetention has passed; irrevocable
// and active ones stay, and a negative retention keeps everything.
func TestPruneRevoked(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		retention time.Duration
		pruned    bool
	}{
		{"after retention", 300 * time.Millisecond, true},
		{"kept forever", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.mount("db", "test", map[string]map[string]string{"short": {"ttl": "50ms"}, "long": {}})
			e.mount("bad", "test2", map[string]map[string]string{"r": {"ttl": "50ms"}})
			e.b2.failRev.Store(true)
			m := e.manager(func(c *lease.Config) { c.RevokedRetention = tc.retention })
			short := mintN(t, m, "db", "short", 4)
			long := mintN(t, m, "db", "long", 1)[0]
			bad := mintN(t, m, "bad", "r", 1)[0]
			m.Start(ctx)
			waitFor(t, 5*time.Second, "expiry", func() bool { return m.Stats().Expired == 4 })
			waitFor(t, 5*time.Second, "irrevocable", func() bool { return state(t, m, bad.Lease.ID) == storage.LeaseIrrevocable })
			// Revoked leases are still there right after revocation.
			if _, err := m.Lookup(ctx, short[0].Lease.ID); err != nil && tc.pruned {
				// Pruning may already have run if the machine is slow; only
				// a missing lease long before the retention is a failure.
				t.Logf("lookup right after expiry: %v", err)
			}
			// Past the retention (storage stamps revocations with real
			// time, which the clock is ahead of).
			e.clock.Add(max(tc.retention, 0) + time.Second)
			gone := func() bool {
				for _, x := range short {
					if _, err := m.Lookup(ctx, x.Lease.ID); !errors.Is(err, lease.ErrNotFound) {
						return false
					}
				}
				return true
			}
			if tc.pruned {
				waitFor(t, 5*time.Second, "revoked leases pruned", gone)
			} else {
				// Idle turns (every PollInterval) would prune by now.
				time.Sleep(200 * time.Millisecond)
				if gone() {
					t.Fatal("revoked leases pruned with a negative retention")
				}
			}
			if s := state(t, m, long.Lease.ID); s != storage.LeaseActive {
				t.Errorf("active lease is %s", s)
			}
			if s := state(t, m, bad.Lease.ID); s != storage.LeaseIrrevocable {
				t.Errorf("irrevocable lease is %s", s)
			}
		})
	}
}

// A lease revoked by request while the worker holds its claim stays
// revoked: the worker's failed attempt, ending after it, does not bring the
// lease back to active with a retry.
func TestRevokeDuringExpiryStaysRevoked(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := &gatedEngine{gate: make(chan struct{}), gateCalls: 1}
	e.gated("db", g, map[string]map[string]string{"r": {"ttl": "50ms"}})
	m := e.manager(nil)
	x := mintN(t, m, "db", "r", 1)[0]
	e.clock.Add(time.Second) // past the 50ms TTL
	m.Start(ctx)
	waitFor(t, 5*time.Second, "worker revocation in flight", func() bool { return g.inFlight.Load() == 1 })
	if err := m.Revoke(ctx, x.Lease.ID); err != nil {
		t.Fatalf("revoke by request: %v", err)
	}
	e.b.failRev.Store(true)
	close(g.gate) // the worker's attempt now fails
	waitFor(t, 5*time.Second, "worker attempt over", func() bool { return g.inFlight.Load() == 0 })
	m.Stop() // waits until the worker has recorded (or skipped) its outcome
	l, err := m.Lookup(ctx, x.Lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if l.State != storage.LeaseRevoked || l.Attempts != 0 || l.LastError != "" {
		t.Fatalf("after a revocation by request and a failed worker attempt: %s, attempts %d, last error %q", l.State, l.Attempts, l.LastError)
	}
	if st := m.Stats(); st.Failures != 0 || st.Expired != 0 || st.Revoked != 1 {
		t.Errorf("stats %+v", st)
	}
}

// batchEngine is the test engine with RevokeBatch: it records the size of
// each call and fails each credential in failOnce the first time it sees
// it. With short set it returns one result too few.
type batchEngine struct {
	testEngine
	mu       sync.Mutex
	calls    []int
	failOnce map[string]bool
	short    bool
}

func (e *batchEngine) RevokeBatch(ctx context.Context, revs [][]byte) []error {
	e.mu.Lock()
	e.calls = append(e.calls, len(revs))
	e.mu.Unlock()
	out := make([]error, len(revs))
	for i, rev := range revs {
		e.mu.Lock()
		fail := e.failOnce[string(rev)]
		delete(e.failOnce, string(rev))
		e.mu.Unlock()
		if fail {
			out[i] = errors.New("transient")
			continue
		}
		out[i] = e.testEngine.Revoke(ctx, rev)
	}
	if e.short {
		return out[:len(out)-1]
	}
	return out
}

// A BatchRevoker gets every lease of its mount in a batch in one call, and
// each lease's own result is recorded; leases of other mounts in the same
// batch are revoked one by one as usual.
func TestExpiryBatchRevoker(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	be := &batchEngine{testEngine: testEngine{e.b}, failOnce: map[string]bool{}}
	if err := e.reg.Register("bulk", func(engines.Env) (engines.Engine, error) { return be, nil }); err != nil {
		t.Fatal(err)
	}
	e.mount("bulk", "bulk", map[string]map[string]string{"r": {"ttl": "50ms"}})
	e.mount("one", "test2", map[string]map[string]string{"r": {"ttl": "50ms"}})
	m := e.manager(func(c *lease.Config) { c.BatchSize = 100 })
	bulk := mintN(t, m, "bulk", "r", 30)
	one := mintN(t, m, "one", "r", 5)
	flaky := map[string]bool{}
	for _, x := range bulk[:3] {
		be.failOnce[x.Data["username"]] = true
		flaky[x.Lease.ID] = true
	}
	e.clock.Add(time.Second) // past the 50ms TTL
	m.Start(ctx)
	waitFor(t, 10*time.Second, "all expired", func() bool { return m.Stats().Expired == 35 })
	be.mu.Lock()
	calls := append([]int(nil), be.calls...)
	be.mu.Unlock()
	if len(calls) == 0 || calls[0] != 30 {
		t.Errorf("RevokeBatch calls %v, want the 30 leases of the mount in the first", calls)
	}
	for _, x := range bulk {
		l, err := m.Lookup(ctx, x.Lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := 1
		if flaky[x.Lease.ID] {
			want = 2
		}
		if l.State != storage.LeaseRevoked || l.Attempts != want {
			t.Errorf("%s: %s after %d attempts, want revoked after %d", x.Lease.ID, l.State, l.Attempts, want)
		}
	}
	if n := e.b.count(); n != 0 {
		t.Errorf("%d credentials left in the batch engine's backend", n)
	}
	if n := e.b2.count(); n != 0 || len(one) != 5 {
		t.Errorf("%d credentials left in the one-by-one backend", n)
	}
	if st := m.Stats(); st.Failures != 3 {
		t.Errorf("stats %+v, want 3 failures", st)
	}
}

// An engine that answers with too few results fails the leases it gave no
// answer for (they are retried), never marks them revoked.
func TestExpiryBatchRevokerShortAnswer(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	be := &batchEngine{testEngine: testEngine{e.b}, short: true}
	if err := e.reg.Register("bulk", func(engines.Env) (engines.Engine, error) { return be, nil }); err != nil {
		t.Fatal(err)
	}
	e.mount("bulk", "bulk", map[string]map[string]string{"r": {"ttl": "50ms"}})
	m := e.manager(func(c *lease.Config) { c.MaxAttempts = 1 })
	mintN(t, m, "bulk", "r", 4)
	e.clock.Add(time.Second) // past the 50ms TTL
	m.Start(ctx)
	waitFor(t, 5*time.Second, "outcomes", func() bool { st := m.Stats(); return st.Expired == 3 && st.Irrevocable == 1 })
	irr, _, err := m.List(ctx, lease.ListOptions{Irrevocable: true})
	if err != nil || len(irr) != 1 || !strings.Contains(irr[0].LastError, "returned 3 results for 4") {
		t.Fatalf("irrevocable %v, %v", irr, err)
	}
}
