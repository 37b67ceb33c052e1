package lease_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// backend is the fake "database" behind the test engine. It outlives
// managers and stores, like a real database outlives Sigil restarts.
type backend struct {
	mu       sync.Mutex
	live     map[string]time.Time // credential -> valid until
	revokes  map[string]int       // successful revocations per credential
	renews   int
	creates  int // credentials Create made
	failRev  atomic.Bool
	failNew  atomic.Bool
	blockNew chan struct{} // if non-nil, Create waits on it
	started  chan struct{} // if non-nil, Create signals it on entry
	// lateNew > 0: Create reports an unknown outcome at once and the
	// credential appears lateNew later, as a commit the client gave up on.
	lateNew   time.Duration
	revokeErr error
}

func newBackend() *backend {
	return &backend{live: map[string]time.Time{}, revokes: map[string]int{}, revokeErr: errors.New("backend unreachable")}
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.live)
}

func (b *backend) has(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.live[name]
	return ok
}

// testEngine is a real engine implementation (the contract under test)
// over the in-memory backend. Role fields: ttl, max_ttl, renewable.
type testEngine struct{ b *backend }

func (e *testEngine) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	if cfg["bad"] != "" {
		return nil, engines.ErrInvalidConfig
	}
	return cfg, nil
}

func (e *testEngine) ValidateRole(_ context.Context, _ string, f map[string]string) (map[string]string, error) {
	for _, k := range []string{"ttl", "max_ttl"} {
		if v, ok := f[k]; ok {
			if _, err := time.ParseDuration(v); err != nil {
				return nil, fmt.Errorf("%w: %s", engines.ErrInvalidConfig, k)
			}
		}
	}
	return f, nil
}

func dur(f map[string]string, k string, d time.Duration) time.Duration {
	if v, err := time.ParseDuration(f[k]); err == nil {
		return v
	}
	return d
}

func (e *testEngine) Prepare(_ context.Context, r engines.Role, req engines.MintRequest) (*engines.Pending, error) {
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	name := "u_" + r.Name + "_" + hex.EncodeToString(rb[:])
	ttl := dur(r.Fields, "ttl", time.Hour)
	if req.TTL > 0 {
		ttl = req.TTL
	}
	maxTTL := dur(r.Fields, "max_ttl", 24*time.Hour)
	ttl = min(ttl, maxTTL)
	return &engines.Pending{
		Revocation: []byte(name), ExpiresAt: req.Now.Add(ttl), MaxExpiresAt: req.Now.Add(maxTTL),
		Renewable: r.Fields["renewable"] != "false", Private: "pw-" + name,
	}, nil
}

func (e *testEngine) Create(ctx context.Context, p *engines.Pending) (*engines.Secret, error) {
	if e.b.started != nil {
		e.b.started <- struct{}{}
	}
	if d := e.b.lateNew; d > 0 {
		name, exp := string(p.Revocation), p.ExpiresAt
		time.AfterFunc(d, func() {
			e.b.mu.Lock()
			e.b.live[name] = exp
			e.b.mu.Unlock()
		})
		return nil, fmt.Errorf("%w: connection lost", engines.ErrOutcomeUnknown)
	}
	if e.b.blockNew != nil {
		select {
		case <-e.b.blockNew:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if e.b.failNew.Load() {
		return nil, errors.New("create refused")
	}
	name := string(p.Revocation)
	e.b.mu.Lock()
	e.b.live[name] = p.ExpiresAt
	e.b.creates++
	e.b.mu.Unlock()
	return &engines.Secret{Data: map[string]string{"username": name, "password": p.Private.(string)}}, nil
}

func (e *testEngine) Renew(_ context.Context, rev []byte, exp time.Time) error {
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	if _, ok := e.b.live[string(rev)]; !ok {
		return errors.New("no such credential")
	}
	e.b.live[string(rev)] = exp
	e.b.renews++
	return nil
}

func (e *testEngine) Revoke(_ context.Context, rev []byte) error {
	if e.b.failRev.Load() {
		return e.b.revokeErr
	}
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	delete(e.b.live, string(rev)) // idempotent
	e.b.revokes[string(rev)]++
	return nil
}

func (e *testEngine) Close() error { return nil }

// testClock is the managers' clock: real time moved forward by what a
// test adds, so a lease's expiry is reached at once while claims, backoff
// and timeouts keep running.
type testClock struct{ ahead atomic.Int64 }

func (c *testClock) Now() time.Time      { return time.Now().Add(time.Duration(c.ahead.Load())) }
func (c *testClock) Add(d time.Duration) { c.ahead.Add(int64(d)) }

type env struct {
	t      testing.TB
	clock  *testClock // shared by every manager of the env
	dir    string
	store  storage.Store
	bar    *barrier.Barrier
	mk     []byte
	reg    *engines.Registry
	mounts *engines.Mounts
	b      *backend
	b2     *backend // behind type "test2"
}

func newEnv(t *testing.T) *env { return newEnvB(t) }

func newEnvB(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clock: &testClock{}, b: newBackend(), b2: newBackend()}
	e.mk = barriertest.MasterKey(t)
	e.reg = engines.NewRegistry()
	if err := e.reg.Register("test", func(engines.Env) (engines.Engine, error) { return &testEngine{e.b}, nil }); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Register("test2", func(engines.Env) (engines.Engine, error) { return &testEngine{e.b2}, nil }); err != nil {
		t.Fatal(err)
	}
	e.open()
	return e
}

// open (re)opens the store, barrier and mounts, as a restarted node would.
func (e *env) open() {
	e.t.Helper()
	st := barriertest.OpenSQLite(e.t, filepath.Join(e.dir, "sigil.db"))
	e.store = st
	e.bar = barriertest.Open(e.t, st, e.mk)
	e.mounts = engines.NewMounts(st, e.bar, e.reg, engines.Services{}, nil)
}

func (e *env) manager(mod func(*lease.Config)) *lease.Manager {
	e.t.Helper()
	cfg := lease.Config{
		Store: e.store, Sealer: e.bar, Engines: e.mounts, Now: e.clock.Now,
		PollInterval: 20 * time.Millisecond, BackoffBase: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		MaxAttempts: 3, RevokeTimeout: time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := lease.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(m.Stop)
	return m
}

func (e *env) mount(path, typ string, roles map[string]map[string]string) {
	e.t.Helper()
	ctx := context.Background()
	if err := e.mounts.Enable(ctx, path, typ); err != nil {
		e.t.Fatal(err)
	}
	for n, f := range roles {
		if err := e.mounts.WriteRole(ctx, path, n, f); err != nil {
			e.t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func state(t *testing.T, m *lease.Manager, id string) storage.LeaseState {
	t.Helper()
	l, err := m.Lookup(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return l.State
}

func TestMintRenewRevoke(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{
		"ro":    {"ttl": "1h", "max_ttl": "2h"},
		"fixed": {"renewable": "false"},
	})
	m := e.manager(nil)

	got, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "ro", Identity: "alice", Owner: "token:alice"})
	if err != nil {
		t.Fatal(err)
	}
	id := got.Lease.ID
	// The owner is recorded with the lease and decides who manages it.
	if looked, err := m.Lookup(ctx, id); err != nil || looked.Owner != "token:alice" || !looked.OwnedBy("token:alice") ||
		looked.OwnedBy("token:bob") || (&lease.Lease{}).OwnedBy("") {
		t.Fatalf("owner of %s: %+v %v", id, looked, err)
	}
	if !strings.HasPrefix(id, "db/ro/") || len(id) != len("db/ro/")+26 {
		t.Errorf("lease id %q", id)
	}
	user := got.Data["username"]
	if !e.b.has(user) || got.Data["password"] == "" {
		t.Fatalf("credential not created: %v", got.Data)
	}
	// The stored lease never holds the credential in clear.
	sl, err := e.store.Leases().Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sl.SealedRevocation), user) {
		t.Error("revocation data stored in clear")
	}
	if ttl := got.Lease.ExpiresAt.Sub(got.Lease.IssuedAt); ttl != time.Hour {
		t.Errorf("ttl %v", ttl)
	}
	l, err := m.Lookup(ctx, id)
	if err != nil || l.Identity != "alice" || l.State != storage.LeaseActive || !l.ExpiresAt.Equal(got.Lease.ExpiresAt) {
		t.Fatalf("Lookup = %+v, %v", l, err)
	}

	// Renew is capped at max TTL.
	r, err := m.Renew(ctx, id, 10*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !r.ExpiresAt.Equal(l.MaxExpiresAt) {
		t.Errorf("renewed to %v, max %v", r.ExpiresAt, l.MaxExpiresAt)
	}
	if e.b.renews != 1 {
		t.Errorf("backend renews %d", e.b.renews)
	}

	fx, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "fixed", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Renew(ctx, fx.Lease.ID, time.Minute); !errors.Is(err, lease.ErrNotRenewable) {
		t.Errorf("renew non-renewable: %v", err)
	}

	if err := m.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if e.b.has(user) {
		t.Error("credential survives revoke")
	}
	if err := m.Revoke(ctx, id); err != nil {
		t.Errorf("second revoke: %v", err)
	}
	if _, err := m.Renew(ctx, id, time.Minute); !errors.Is(err, lease.ErrNotActive) {
		t.Errorf("renew revoked: %v", err)
	}
	if _, err := m.Lookup(ctx, "db/ro/nope"); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("lookup missing: %v", err)
	}
	if err := m.Revoke(ctx, "db/ro/nope"); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("revoke missing: %v", err)
	}
	if _, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "nope"}); !errors.Is(err, engines.ErrRoleNotFound) {
		t.Errorf("mint unknown role: %v", err)
	}
	if _, err := m.Mint(ctx, lease.MintRequest{Mount: "nodb", Role: "ro"}); !errors.Is(err, engines.ErrMountNotFound) {
		t.Errorf("mint unknown mount: %v", err)
	}
	ls, _, err := m.List(ctx, lease.ListOptions{Prefix: "db/"})
	if err != nil || len(ls) != 1 || ls[0].ID != fx.Lease.ID {
		t.Errorf("List = %v, %v", ls, err)
	}
}

func TestExpiryWorker(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"short": {"ttl": "1m"}, "long": {}})
	m := e.manager(nil)
	m.Start(ctx)
	var short []string
	for range 5 {
		got, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "short"})
		if err != nil {
			t.Fatal(err)
		}
		short = append(short, got.Lease.ID)
	}
	long, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "long"})
	if err != nil {
		t.Fatal(err)
	}
	if n := e.b.count(); n != 6 {
		t.Fatalf("%d credentials before any expiry, want 6", n)
	}
	e.clock.Add(2 * time.Minute) // past the short TTL, well before the long one
	waitFor(t, 5*time.Second, "short leases to expire", func() bool { return e.b.count() == 1 })
	// The backend forgets a credential just before the worker records it.
	waitFor(t, 2*time.Second, "expiries recorded", func() bool { return m.Stats().Expired == 5 })
	for _, id := range short {
		if s := state(t, m, id); s != storage.LeaseRevoked {
			t.Errorf("%s is %s", id, s)
		}
	}
	if s := state(t, m, long.Lease.ID); s != storage.LeaseActive {
		t.Errorf("long lease is %s", s)
	}
	if st := m.Stats(); st.Expired != 5 || st.Minted != 6 {
		t.Errorf("stats %+v", st)
	}
}

// A lease that expires while Sigil is down is revoked right after the next
// start, by a new manager over a reopened store.
func TestRestartRevokesExpired(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"r": {"ttl": "1m"}})
	m := e.manager(nil) // never started: the node "crashes" before expiry
	got, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Minute) // the lease expires while the node is down

	e.open()
	m2 := e.manager(nil)
	start := time.Now()
	m2.Start(ctx)
	waitFor(t, 3*time.Second, "revocation after restart", func() bool { return !e.b.has(got.Data["username"]) })
	t.Logf("revoked %v after start", time.Since(start))
	waitFor(t, time.Second, "state recorded", func() bool { return state(t, m2, got.Lease.ID) == storage.LeaseRevoked })
}

// Failing revocations back off and end irrevocable, while leases of a
// healthy backend keep expiring on time; RevokeForce then forgets one.
func TestBackoffThenIrrevocable(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("bad", "test", map[string]map[string]string{"r": {"ttl": "100ms"}})
	e.mount("good", "test2", map[string]map[string]string{"r": {"ttl": "400ms"}})
	e.b.failRev.Store(true)
	m := e.manager(nil)
	bad, err := m.Mint(ctx, lease.MintRequest{Mount: "bad", Role: "r"})
	if err != nil {
		t.Fatal(err)
	}
	good, err := m.Mint(ctx, lease.MintRequest{Mount: "good", Role: "r"})
	if err != nil {
		t.Fatal(err)
	}
	m.Start(ctx)

	// Watch attempts climb with growing gaps.
	var seen []time.Time
	last := 0
	waitFor(t, 5*time.Second, "irrevocable", func() bool {
		l, err := m.Lookup(ctx, bad.Lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attempts != last {
			last = l.Attempts
			seen = append(seen, time.Now())
		}
		return l.State == storage.LeaseIrrevocable
	})
	if last != 3 {
		t.Errorf("attempts %d, want 3", last)
	}
	l, _ := m.Lookup(ctx, bad.Lease.ID)
	if !strings.Contains(l.LastError, "backend unreachable") {
		t.Errorf("last error %q", l.LastError)
	}
	waitFor(t, 3*time.Second, "healthy lease to expire", func() bool { return e.b2.count() == 0 })
	if d := time.Since(good.Lease.ExpiresAt); d > 2*time.Second {
		t.Errorf("healthy lease revoked %v late", d)
	}
	irr, _, err := m.List(ctx, lease.ListOptions{Irrevocable: true})
	if err != nil || len(irr) != 1 || irr[0].ID != bad.Lease.ID {
		t.Fatalf("irrevocable list = %v, %v", irr, err)
	}
	// Not retried any more.
	time.Sleep(200 * time.Millisecond)
	if l, _ := m.Lookup(ctx, bad.Lease.ID); l.Attempts != 3 {
		t.Errorf("retried after irrevocable: %d attempts", l.Attempts)
	}
	if st := m.Stats(); st.Irrevocable != 1 || st.Failures != 3 {
		t.Errorf("stats %+v", st)
	}
	if err := m.Revoke(ctx, bad.Lease.ID); !errors.Is(err, lease.ErrRevocationFailed) {
		t.Errorf("revoke: %v", err)
	}
	if err := m.RevokeForce(ctx, bad.Lease.ID); err != nil {
		t.Fatal(err)
	}
	l, _ = m.Lookup(ctx, bad.Lease.ID)
	if l.State != storage.LeaseRevoked || !strings.HasPrefix(l.LastError, lease.ForcedPrefix) || !strings.Contains(l.LastError, "without backend confirmation") {
		t.Errorf("forced lease %+v", l)
	}
}

func TestRevokePrefix(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"a": {}, "ab": {}, "b": {}})
	m := e.manager(nil)
	for role, n := range map[string]int{"a": 7, "ab": 2, "b": 3} {
		for range n {
			if _, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: role}); err != nil {
				t.Fatal(err)
			}
		}
	}
	n, err := m.RevokePrefix(ctx, "db/a/")
	if err != nil || n != 7 {
		t.Fatalf("RevokePrefix = %d, %v", n, err)
	}
	if c := e.b.count(); c != 5 {
		t.Errorf("%d credentials left, want 5", c)
	}
	if _, err := m.RevokePrefix(ctx, ""); !errors.Is(err, lease.ErrInvalidRequest) {
		t.Errorf("empty prefix: %v", err)
	}
	// Disabling the mount is refused while leases are active...
	if err := e.mounts.Disable(ctx, "db", nil); !errors.Is(err, engines.ErrMountInUse) {
		t.Errorf("disable in use: %v", err)
	}
	// ...and revokes them when asked.
	if err := e.mounts.Disable(ctx, "db", func(ctx context.Context, p string) error {
		_, err := m.RevokePrefix(ctx, p)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if c := e.b.count(); c != 0 {
		t.Errorf("%d credentials left after disable", c)
	}
}

func TestQuotas(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"a": {"max_leases": "3"}, "b": {}})
	if err := e.mounts.Configure(ctx, "db", map[string]string{"max_leases": "5"}); err != nil {
		t.Fatal(err)
	}
	m := e.manager(nil)
	var ok, quota atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			_, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "a"})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, lease.ErrQuotaExceeded):
				quota.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 3 || quota.Load() != 5 {
		t.Fatalf("role quota: %d minted, %d refused", ok.Load(), quota.Load())
	}
	for range 2 {
		if _, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "b"})
	if !errors.Is(err, lease.ErrQuotaExceeded) || !strings.Contains(err.Error(), "mount db") {
		t.Fatalf("mount quota: %v", err)
	}
	if e.b.count() != 5 {
		t.Errorf("backend has %d credentials", e.b.count())
	}
	// Revoking frees a slot.
	ls, _, _ := m.List(ctx, lease.ListOptions{Prefix: "db/a/"})
	if err := m.Revoke(ctx, ls[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "b"}); err != nil {
		t.Fatalf("after revoke: %v", err)
	}
	cfg, err := e.mounts.ReadConfig(ctx, "db")
	if err != nil || cfg["max_leases"] != "5" {
		t.Errorf("ReadConfig = %v, %v", cfg, err)
	}
	role, err := e.mounts.ReadRole(ctx, "db", "a")
	if err != nil || role["max_leases"] != "3" {
		t.Errorf("ReadRole = %v, %v", role, err)
	}
}

// failingStore makes Leases().Activate (lease activation) fail.
type failingStore struct {
	storage.Store
	fail atomic.Bool
}

func (f *failingStore) Leases() storage.Leases { return failingLeases{f.Store.Leases(), f} }

type failingLeases struct {
	storage.Leases
	f *failingStore
}

func (l failingLeases) Activate(ctx context.Context, id string, t time.Time) error {
	if l.f.fail.Load() {
		return errors.New("storage down")
	}
	return l.Leases.Activate(ctx, id, t)
}

// No orphans: when the lease cannot be activated the credential is revoked
// before Mint returns; when that revocation fails too, the pending lease
// expires and the worker revokes it.
func TestMintNeverOrphans(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"r": {}})
	fs := &failingStore{Store: e.store}
	fs.fail.Store(true)
	m := e.manager(func(c *lease.Config) { c.Store = fs; c.MintTimeout = 150 * time.Millisecond })

	if _, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"}); err == nil {
		t.Fatal("mint succeeded")
	}
	if e.b.count() != 0 {
		t.Fatal("credential orphaned after activation failure")
	}
	ls, _, _ := e.store.Leases().List(ctx, storage.LeaseFilter{State: storage.LeaseRevoked})
	if len(ls) != 1 {
		t.Fatalf("%d revoked leases", len(ls))
	}

	// Create fails: nothing left, lease closed.
	fs.fail.Store(false)
	e.b.failNew.Store(true)
	if _, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"}); !errors.Is(err, lease.ErrMintFailed) {
		t.Fatalf("create failure: %v", err)
	}
	e.b.failNew.Store(false)

	// Activation and the immediate undo both fail: the credential exists,
	// but its pending lease is due after 2×MintTimeout and the worker takes it.
	fs.fail.Store(true)
	e.b.failRev.Store(true)
	if _, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"}); err == nil {
		t.Fatal("mint succeeded")
	}
	if e.b.count() != 1 {
		t.Fatalf("expected the credential to exist, %d", e.b.count())
	}
	e.b.failRev.Store(false)
	m.Start(ctx)
	waitFor(t, 3*time.Second, "pending lease revoked", func() bool { return e.b.count() == 0 })
	waitFor(t, 2*time.Second, "no active lease", func() bool {
		n, err := e.store.Leases().CountActive(ctx, "")
		return err == nil && n == 0
	})
}

// Two nodes sharing one store never revoke one lease twice.
func TestTwoWorkersShareTheLoad(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"r": {"ttl": "1m"}})
	m1 := e.manager(func(c *lease.Config) { c.BatchSize = 7 })
	m2 := e.manager(func(c *lease.Config) { c.BatchSize = 7 })
	const n = 60
	for range n {
		if _, err := m1.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"}); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Add(2 * time.Minute)
	m1.Start(ctx)
	m2.Start(ctx)
	waitFor(t, 10*time.Second, "all revoked", func() bool { return e.b.count() == 0 })
	waitFor(t, 2*time.Second, "all recorded", func() bool { return m1.Stats().Expired+m2.Stats().Expired == n })
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	for u, c := range e.b.revokes {
		if c != 1 {
			t.Errorf("%s revoked %d times", u, c)
		}
	}
	t.Logf("node 1 revoked %d, node 2 %d", m1.Stats().Expired, m2.Stats().Expired)
}
