package lease_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// A caller that gives up mid-create does not cut the create short: it runs
// to completion under the server's context, and since nobody can receive
// the secret, the lease is revoked through the normal path.
func TestMintIgnoresCallerCancel(t *testing.T) {
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"r": {}})
	e.b.blockNew = make(chan struct{})
	e.b.started = make(chan struct{}, 1)
	m := e.manager(func(c *lease.Config) { c.MintTimeout = 5 * time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
		errc <- err
	}()
	<-e.b.started
	cancel()
	time.Sleep(50 * time.Millisecond) // the create must still be running
	close(e.b.blockNew)
	err := <-errc
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("mint for a caller that left: %v, want context.Canceled", err)
	}
	if n := e.b.count(); n != 0 {
		t.Fatalf("%d credentials left behind by a cancelled mint", n)
	}
	ls, _, err := e.store.Leases().List(context.Background(), storage.LeaseFilter{Prefix: "db/"})
	if err != nil || len(ls) != 1 || ls[0].State != storage.LeaseRevoked {
		t.Fatalf("leases after a cancelled mint: %v %v, want one revoked", ls, err)
	}
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	if e.b.creates != 1 {
		t.Errorf("the create ran to completion %d times, want once: the caller's cancellation cut it short", e.b.creates)
	}
	if len(e.b.revokes) != 1 {
		t.Errorf("the created credential was revoked %d times, want once", len(e.b.revokes))
	}
}

// When the create's outcome is unknown and the secret appears only after
// the immediate revocation (a commit the client gave up on), the lease is
// not closed by that revocation: it stays pending, listed as such, and the
// expiry worker revokes the secret once the pending window is over.
func TestMintUnknownOutcomeDefersUndo(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"r": {}})
	// The pending window (2×MintTimeout) is long in real time, so the
	// revoke below always falls inside it however loaded the machine; the
	// test then moves the managers' clock past it instead of sleeping.
	const mintTimeout = 10 * time.Second
	e.b.lateNew = 50 * time.Millisecond
	m := e.manager(func(c *lease.Config) { c.MintTimeout = mintTimeout })
	_, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
	if !errors.Is(err, lease.ErrMintFailed) {
		t.Fatalf("mint: %v, want ErrMintFailed", err)
	}
	list, _, err := m.List(ctx, lease.ListOptions{Prefix: "db/"})
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	l := list[0]
	if l.State != storage.LeasePending || !strings.Contains(l.LastError, "outcome unknown") {
		t.Fatalf("failed mint listed as %s (%q), want pending with its reason", l.State, l.LastError)
	}
	if err := m.Revoke(ctx, l.ID); !errors.Is(err, lease.ErrPending) {
		t.Errorf("revoke of a pending lease in its window: %v, want ErrPending", err)
	}
	waitFor(t, 2*time.Second, "the late credential to appear", func() bool { return e.b.count() == 1 })
	m.Start(ctx)
	time.Sleep(100 * time.Millisecond) // a few polls inside the window: the worker must leave it alone
	if e.b.count() != 1 {
		t.Fatal("the worker revoked a pending lease inside its window")
	}
	e.clock.Add(2*mintTimeout + time.Second)
	waitFor(t, 5*time.Second, "the late credential revoked by the worker", func() bool { return e.b.count() == 0 })
	waitFor(t, 2*time.Second, "the lease closed", func() bool { return state(t, m, l.ID) == storage.LeaseRevoked })
	got, err := m.Lookup(ctx, l.ID)
	if err != nil || !strings.HasPrefix(got.LastError, "mint failed") {
		t.Errorf("closed lease keeps why its mint failed: %q %v", got.LastError, err)
	}
}

// A failed revocation by request records its error, ends the lease now and
// is retried with backoff until it succeeds, or, as for an expiry, until
// MaxAttempts make the lease irrevocable.
func TestFailedRevokeRetried(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		recovers  bool
		wantState storage.LeaseState
	}{
		{"backend recovers", true, storage.LeaseRevoked},
		{"backend stays down", false, storage.LeaseIrrevocable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.mount("db", "test", map[string]map[string]string{"r": {"ttl": "1h"}})
			m := e.manager(nil)
			x, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
			if err != nil {
				t.Fatal(err)
			}
			e.b.failRev.Store(true)
			if err := m.Revoke(ctx, x.Lease.ID); !errors.Is(err, lease.ErrRevocationFailed) {
				t.Fatalf("revoke against a failing backend: %v", err)
			}
			l, err := m.Lookup(ctx, x.Lease.ID)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attempts != 1 || l.LastError != "backend unreachable" || l.ExpiresAt.After(time.Now()) {
				t.Fatalf("after a failed revoke: attempts %d, last error %q, expires %v; want 1, the error, ended", l.Attempts, l.LastError, l.ExpiresAt)
			}
			if _, err := m.Renew(ctx, x.Lease.ID, time.Hour); !errors.Is(err, lease.ErrNotActive) {
				t.Errorf("renew after a failed revoke: %v, want ErrNotActive", err)
			}
			if tc.recovers {
				e.b.failRev.Store(false)
			}
			m.Start(ctx)
			waitFor(t, 5*time.Second, "the worker to finish the revocation", func() bool { return state(t, m, x.Lease.ID) == tc.wantState })
			if tc.recovers != (e.b.count() == 0) {
				t.Errorf("backend holds %d credentials", e.b.count())
			}
		})
	}
}
