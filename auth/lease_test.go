package auth_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// leaseClock is a settable clock for the lease manager, so expiry is
// reached without waiting for it.
type leaseClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *leaseClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *leaseClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type leaseEnv struct {
	st     storage.Store
	tokens *auth.Tokens
	mounts *engines.Mounts
	leases *lease.Manager
	clock  *leaseClock
}

// newLeaseEnv wires tokens, the lease engine and a lease manager over
// SQLite and an unsealed barrier, as the server does; mount says whether
// the lease engine is mounted.
func newLeaseEnv(t *testing.T, mount bool) *leaseEnv {
	t.Helper()
	ctx := context.Background()
	st, b := barriertest.New(t)
	e := &leaseEnv{st: st, tokens: auth.NewTokens(st, b), clock: &leaseClock{t: time.Now()}}
	reg := engines.NewRegistry()
	if err := auth.RegisterLeaseEngine(reg, e.tokens); err != nil {
		t.Fatal(err)
	}
	e.mounts = engines.NewMounts(st, b, reg, engines.Services{}, nil)
	t.Cleanup(func() { e.mounts.Close() })
	if mount {
		for range 2 { // idempotent
			if err := auth.EnsureLeaseMount(ctx, e.mounts); err != nil {
				t.Fatal(err)
			}
		}
	}
	var err error
	e.leases, err = lease.New(lease.Config{Store: st, Sealer: b, Engines: e.mounts, Now: e.clock.Now, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestTokenLeaseID(t *testing.T) {
	tests := []struct {
		id, token string
		isAuth    bool
	}{
		{auth.LeaseID("abc"), "abc", true},
		{"auth/token/abc", "abc", true},
		{"auth/token/a/b", "", true},
		{"auth/other/abc", "", true},
		{"auth", "", true},
		{"authx/token/abc", "", false},
		{"db/ro/abc", "", false},
	}
	for _, tt := range tests {
		tok, isAuth := auth.TokenOfLease(tt.id)
		if tok != tt.token || isAuth != tt.isAuth {
			t.Errorf("TokenOfLease(%q) = %q, %v; want %q, %v", tt.id, tok, isAuth, tt.token, tt.isAuth)
		}
	}
}

// TestCreateLeased: a token and its lease are made together through the
// lease manager; revoking the lease, or its expiry, deletes the token.
func TestCreateLeased(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		ttl     time.Duration
		end     func(t *testing.T, e *leaseEnv, leaseID string)
		wantExp func(rec *storage.Token, l *lease.Lease) bool
	}{
		{"revoked on request", 0, func(t *testing.T, e *leaseEnv, id string) {
			if err := e.leases.Revoke(ctx, id); err != nil {
				t.Fatal(err)
			}
		}, func(_ *storage.Token, l *lease.Lease) bool {
			// No TTL: the lease lasts until revoked.
			return l.ExpiresAt.Sub(l.IssuedAt) == lease.NoExpiry
		}},
		{"revoked at expiry", time.Hour, func(t *testing.T, e *leaseEnv, id string) {
			e.clock.Add(time.Hour + time.Minute)
			e.leases.Start(ctx)
			t.Cleanup(e.leases.Stop)
			deadline := time.Now().Add(10 * time.Second)
			for {
				l, err := e.leases.Lookup(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if l.State == storage.LeaseRevoked {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("lease %s still %s after its expiry", id, l.State)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}, func(rec *storage.Token, l *lease.Lease) bool {
			return l.ExpiresAt.Equal(rec.ExpiresAt.UTC().Truncate(time.Microsecond))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newLeaseEnv(t, true)
			tok, rec, err := e.tokens.CreateLeased(ctx, e.leases, auth.CreateOptions{Policies: []string{"p"}, TTL: tt.ttl}, "alice", "token:creator")
			if err != nil {
				t.Fatal(err)
			}
			id := auth.LeaseID(rec.ID)
			l, err := e.leases.Lookup(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if l.State != storage.LeaseActive || l.Owner != "token:creator" || l.Identity != "alice" ||
				l.Mount != auth.LeaseMount || l.Role != auth.LeaseRole || l.Renewable || !tt.wantExp(rec, l) {
				t.Fatalf("lease = %+v", l)
			}
			if _, err := e.tokens.Verify(ctx, tok); err != nil {
				t.Fatalf("token before its lease ends: %v", err)
			}
			tt.end(t, e, id)
			if _, err := e.tokens.Verify(ctx, tok); !errors.Is(err, auth.ErrInvalidToken) {
				t.Fatalf("token after its lease ended: %v, want ErrInvalidToken", err)
			}
			if _, err := e.st.Tokens().Get(ctx, rec.ID); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("token record after its lease ended: %v", err)
			}
			// Revoking again finds nothing to do and succeeds.
			if err := e.leases.Revoke(ctx, id); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCreateLeasedWithoutLeaseDeletesToken: a token whose lease cannot be
// registered (here: the lease engine is not mounted) does not survive.
func TestCreateLeasedWithoutLeaseDeletesToken(t *testing.T) {
	ctx := context.Background()
	e := newLeaseEnv(t, false)
	_, _, err := e.tokens.CreateLeased(ctx, e.leases, auth.CreateOptions{ID: "orphan", Policies: []string{"p"}}, "alice", "token:creator")
	if !errors.Is(err, engines.ErrMountNotFound) {
		t.Fatalf("CreateLeased = %v, want ErrMountNotFound", err)
	}
	if _, err := e.st.Tokens().Get(ctx, "orphan"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("token after its lease failed: %v, want it deleted", err)
	}
	if _, err := e.leases.Lookup(ctx, auth.LeaseID("orphan")); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("lease: %v", err)
	}
}

// TestLeaseMountMintsNothing: the token mount has no roles and mints
// nothing; tokens are made by CreateLeased only.
func TestLeaseMountMintsNothing(t *testing.T) {
	ctx := context.Background()
	e := newLeaseEnv(t, true)
	if err := e.mounts.WriteRole(ctx, auth.LeaseMount, auth.LeaseRole, nil); !errors.Is(err, engines.ErrNotSupported) {
		t.Errorf("WriteRole = %v, want ErrNotSupported", err)
	}
	if _, err := e.leases.Mint(ctx, lease.MintRequest{Mount: auth.LeaseMount, Role: auth.LeaseRole}); !errors.Is(err, engines.ErrNotSupported) {
		t.Errorf("Mint = %v, want ErrNotSupported", err)
	}
}

// TestTokenRenew: a token made with a max TTL renews up to that max (and
// up to the caller's cap), its expiry moving with its lease's; past the max
// it is refused and stops working; a token without a max is not renewable;
// a renewed token is still revoked with its lease.
func TestTokenRenew(t *testing.T) {
	ctx := context.Background()
	e := newLeaseEnv(t, true)
	auth.SetClock(e.tokens, e.clock.Now)
	t0 := e.clock.Now().UTC().Truncate(time.Microsecond)
	tok, rec, err := e.tokens.CreateLeased(ctx, e.leases, auth.CreateOptions{Policies: []string{"p"}, TTL: time.Hour, MaxTTL: 3 * time.Hour}, "alice", "auth:jwt:alice")
	if err != nil {
		t.Fatal(err)
	}
	if l, err := e.leases.Lookup(ctx, auth.LeaseID(rec.ID)); err != nil || !l.Renewable || !l.MaxExpiresAt.Equal(t0.Add(3*time.Hour)) {
		t.Fatalf("lease of a renewable token = %+v, %v", l, err)
	}
	steps := []struct {
		name      string
		advance   time.Duration
		increment time.Duration
		capAt     time.Time
		want      time.Duration // token and lease expiry after it, from t0
		err       error
	}{
		{"default increment is the token's ttl", 30 * time.Minute, 0, time.Time{}, 90 * time.Minute, nil},
		{"explicit increment", 30 * time.Minute, 30 * time.Minute, time.Time{}, 90 * time.Minute, nil},
		{"capped by the caller", 0, 2 * time.Hour, t0.Add(2 * time.Hour), 2 * time.Hour, nil},
		{"caller's cap already reached", 0, time.Hour, t0.Add(time.Hour), 0, lease.ErrMaxTTL},
		{"capped at the max ttl", 30 * time.Minute, 5 * time.Hour, time.Time{}, 3 * time.Hour, nil},
		{"negative increment", 0, -time.Second, time.Time{}, 0, lease.ErrInvalidRequest},
		{"past the max", 91 * time.Minute, time.Hour, time.Time{}, 0, auth.ErrInvalidToken},
	}
	for _, s := range steps {
		e.clock.Add(s.advance)
		got, l, err := e.tokens.Renew(ctx, e.leases, rec.ID, s.increment, s.capAt)
		if s.err != nil {
			if !errors.Is(err, s.err) {
				t.Fatalf("%s: Renew = %v, want %v", s.name, err, s.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		stored, err := e.st.Tokens().Get(ctx, rec.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := t0.Add(s.want)
		if !l.ExpiresAt.Equal(want) || !got.ExpiresAt.Equal(want) || !stored.ExpiresAt.Equal(want) {
			t.Fatalf("%s: lease %s, token %s (stored %s), want %s", s.name, l.ExpiresAt, got.ExpiresAt, stored.ExpiresAt, want)
		}
		if _, err := e.tokens.Verify(ctx, tok); err != nil {
			t.Fatalf("%s: renewed token: %v", s.name, err)
		}
	}
	if _, err := e.tokens.Verify(ctx, tok); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("token past its max: %v, want ErrInvalidToken", err)
	}
}

// TestTokenRenewRefused: tokens that were not made renewable, or whose
// lease is gone, are not renewed, and a renewed token still dies with its
// lease.
func TestTokenRenewRefused(t *testing.T) {
	ctx := context.Background()
	e := newLeaseEnv(t, true)
	auth.SetClock(e.tokens, e.clock.Now)
	fixed, _, err := e.tokens.CreateLeased(ctx, e.leases, auth.CreateOptions{ID: "fixed", Policies: []string{"p"}, TTL: time.Hour}, "a", "o")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.tokens.CreateLeased(ctx, e.leases, auth.CreateOptions{ID: "forever", Policies: []string{"p"}}, "a", "o"); err != nil {
		t.Fatal(err)
	}
	renewable, _, err := e.tokens.CreateLeased(ctx, e.leases, auth.CreateOptions{ID: "renewable", Policies: []string{"p"}, TTL: time.Hour, MaxTTL: 2 * time.Hour}, "a", "o")
	if err != nil {
		t.Fatal(err)
	}
	// A token whose lease was never registered (made before leases tracked
	// tokens) is not renewable: nothing could revoke the extension.
	_, unleased, err := e.tokens.Create(ctx, auth.CreateOptions{ID: "unleased", Policies: []string{"p"}, TTL: time.Hour, MaxTTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		id   string
		want error
	}{
		{"fixed", auth.ErrNotRenewable},
		{"forever", auth.ErrNotRenewable},
		{"unleased", auth.ErrNotRenewable},
		{"missing", auth.ErrInvalidToken},
	} {
		if _, _, err := e.tokens.Renew(ctx, e.leases, tt.id, time.Hour, time.Time{}); !errors.Is(err, tt.want) {
			t.Errorf("Renew(%s) = %v, want %v", tt.id, err, tt.want)
		}
	}
	if _, err := e.tokens.Verify(ctx, fixed); err != nil {
		t.Fatalf("a refused renewal harmed the token: %v", err)
	}
	stored, err := e.st.Tokens().Get(ctx, "unleased")
	if err != nil || !stored.ExpiresAt.Equal(unleased.ExpiresAt.Truncate(time.Microsecond)) {
		t.Fatalf("unleased token extended by a refused renewal: %+v, %v", stored, err)
	}

	if _, _, err := e.tokens.Renew(ctx, e.leases, "renewable", 90*time.Minute, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := e.leases.Revoke(ctx, auth.LeaseID("renewable")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.tokens.Verify(ctx, renewable); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("renewed token after its lease was revoked: %v, want ErrInvalidToken", err)
	}
	if _, _, err := e.tokens.Renew(ctx, e.leases, "renewable", time.Hour, time.Time{}); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("renewing a revoked token = %v, want ErrInvalidToken", err)
	}
}
