package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/pausepoint"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// pausedRenewEngine is the test engine whose backend renewal holds at a
// pause point, between Renew's checks of the lease and its write.
type pausedRenewEngine struct {
	gatedEngine
	p *pausepoint.Point
}

func (e *pausedRenewEngine) Renew(ctx context.Context, rev []byte, exp time.Time) error {
	e.p.Here()
	return e.testEngine.Renew(ctx, rev, exp)
}

// TestRenewRacingRevocation: a renewal that a revocation overtakes between
// its checks and its write is refused, never reported as granted while the
// revocation goes on. Before the fix, storage took the new expiry whatever
// had happened meanwhile: the worker then revoked a lease whose renewal had
// just succeeded, and a failed revocation by request was put off by an
// hour.
func TestRenewRacingRevocation(t *testing.T) {
	tests := []struct {
		name string
		// between runs while the renewal is held; it returns once the
		// revocation has begun.
		between func(t *testing.T, e *env, m *lease.Manager, g *pausedRenewEngine, id string)
		// after checks the lease once everything settled.
		after func(t *testing.T, e *env, m *lease.Manager, g *pausedRenewEngine, id, user string)
	}{
		{
			name: "the expiry worker claims it",
			between: func(t *testing.T, e *env, m *lease.Manager, g *pausedRenewEngine, _ string) {
				e.clock.Add(2 * time.Minute) // past the TTL
				m.Start(context.Background())
				waitFor(t, 5*time.Second, "the worker's revocation to start", func() bool { return g.inFlight.Load() == 1 })
			},
			after: func(t *testing.T, e *env, m *lease.Manager, g *pausedRenewEngine, id, user string) {
				close(g.gate)
				waitFor(t, 5*time.Second, "the expiry recorded", func() bool { return m.Stats().Expired == 1 })
				if s := state(t, m, id); s != storage.LeaseRevoked {
					t.Errorf("lease is %s, want revoked", s)
				}
				if e.b.has(user) {
					t.Error("the credential outlived the revocation")
				}
			},
		},
		{
			name: "a revocation by request fails",
			between: func(t *testing.T, e *env, m *lease.Manager, g *pausedRenewEngine, id string) {
				close(g.gate) // revocations reach the backend, which refuses them
				e.b.failRev.Store(true)
				if err := m.Revoke(context.Background(), id); !errors.Is(err, lease.ErrRevocationFailed) {
					t.Fatalf("revoke: %v", err)
				}
			},
			after: func(t *testing.T, e *env, m *lease.Manager, _ *pausedRenewEngine, id, _ string) {
				// The failed revocation ended the lease: its retry is due
				// within the backoff, not an hour away.
				l, err := m.Lookup(context.Background(), id)
				if err != nil {
					t.Fatal(err)
				}
				if now := e.clock.Now(); l.ExpiresAt.After(now) {
					t.Errorf("lease expires at %s, after now (%s): the renewal undid the revocation", l.ExpiresAt, now)
				}
				e.b.failRev.Store(false)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t)
			g := &pausedRenewEngine{gatedEngine: gatedEngine{testEngine: testEngine{e.b}, gate: make(chan struct{})}, p: &pausepoint.Point{}}
			e.mountEngine("db", g, map[string]map[string]string{"r": {"ttl": "1m", "max_ttl": "24h"}})
			// Long enough that the worker's held revocation never times out
			// (and releases its claim) before the renewal resumes.
			m := e.manager(func(c *lease.Config) { c.RevokeTimeout = 30 * time.Second })
			got, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
			if err != nil {
				t.Fatal(err)
			}
			id, user := got.Lease.ID, got.Data["username"]
			renewErr, _ := g.p.Interleave(func() error {
				_, err := m.Renew(ctx, id, 10*time.Hour)
				return err
			}, func() error {
				tt.between(t, e, m, g, id)
				return nil
			})
			if !errors.Is(renewErr, lease.ErrNotActive) {
				t.Errorf("renewal overtaken by a revocation: %v, want ErrNotActive", renewErr)
			}
			tt.after(t, e, m, g, id, user)
		})
	}
}

// pausedFailingRevoke is the test engine whose revocations hold at a pause
// point and then fail, as a backend that times out would.
type pausedFailingRevoke struct {
	testEngine
	p *pausepoint.Point
}

func (e *pausedFailingRevoke) Revoke(context.Context, []byte) error {
	e.p.Here()
	return errors.New("backend timed out")
}

// TestRevokeFailureAfterWorkerRevoked: a revocation by request whose own
// attempt fails after the lease was revoked meanwhile (the expiry worker's
// outcome, written here directly) reports success and leaves the lease
// revoked. Before, the failure's record reopened the revoked lease as
// active, due for another revocation, and the caller was told it failed.
func TestRevokeFailureAfterWorkerRevoked(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := &pausedFailingRevoke{testEngine: testEngine{e.b}, p: &pausepoint.Point{}}
	e.mountEngine("db", g, map[string]map[string]string{"r": {"ttl": "1h"}})
	m := e.manager(nil)
	got, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
	if err != nil {
		t.Fatal(err)
	}
	id := got.Lease.ID
	revokeErr, _ := g.p.Interleave(func() error {
		return m.Revoke(ctx, id)
	}, func() error {
		return e.store.Leases().SetState(ctx, id, storage.LeaseRevoked, 1, time.Time{}, "")
	})
	if revokeErr != nil {
		t.Errorf("revoke of a lease revoked meanwhile: %v, want success", revokeErr)
	}
	if s := state(t, m, id); s != storage.LeaseRevoked {
		t.Errorf("lease is %s, want revoked", s)
	}
}
