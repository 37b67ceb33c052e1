package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// configOnly is an engine with no leases at all (only engines.Engine).
type configOnly struct{}

func (configOnly) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	return cfg, nil
}
func (configOnly) Close() error { return nil }

// TestRegister: a lease for a secret made outside any engine is recorded
// active, with its owner, and revoked through the mount's engine on request
// or at expiry; bad requests are refused before anything is stored.
func TestRegister(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if err := e.reg.Register("plain", func(engines.Env) (engines.Engine, error) { return configOnly{}, nil }); err != nil {
		t.Fatal(err)
	}
	e.mount("ext", "test", nil)
	e.mount("plain", "plain", nil)
	m := e.manager(nil)
	// The secrets "exist" in the backend before their leases.
	for _, name := range []string{"s-forever", "s-hour"} {
		e.b.live[name] = time.Time{}
	}

	forever, err := m.Register(ctx, lease.RegisterRequest{Mount: "ext", Role: "kind", Name: "s1",
		Identity: "alice", Owner: "token:alice", Revocation: []byte("s-forever")})
	if err != nil {
		t.Fatal(err)
	}
	if forever.ID != "ext/kind/s1" || forever.State != storage.LeaseActive || forever.Owner != "token:alice" ||
		forever.Identity != "alice" || forever.Renewable || forever.ExpiresAt.Sub(forever.IssuedAt) != lease.NoExpiry {
		t.Fatalf("registered lease %+v", forever)
	}
	hour, err := m.Register(ctx, lease.RegisterRequest{Mount: "ext", Role: "kind", Name: "s2",
		ExpiresAt: e.clock.Now().Add(time.Hour), Revocation: []byte("s-hour")})
	if err != nil {
		t.Fatal(err)
	}

	bad := []struct {
		name string
		req  lease.RegisterRequest
		want error
	}{
		{"taken name", lease.RegisterRequest{Mount: "ext", Role: "kind", Name: "s1"}, storage.ErrConflict},
		{"bad mount", lease.RegisterRequest{Mount: "../x", Role: "kind", Name: "n"}, engines.ErrInvalidPath},
		{"bad role", lease.RegisterRequest{Mount: "ext", Role: "a/b", Name: "n"}, engines.ErrInvalidPath},
		{"bad name", lease.RegisterRequest{Mount: "ext", Role: "kind", Name: "a/b"}, lease.ErrInvalidRequest},
		{"no such mount", lease.RegisterRequest{Mount: "nope", Role: "kind", Name: "n"}, engines.ErrMountNotFound},
		{"engine cannot revoke", lease.RegisterRequest{Mount: "plain", Role: "kind", Name: "n"}, engines.ErrNotSupported},
		{"expired already", lease.RegisterRequest{Mount: "ext", Role: "kind", Name: "n", ExpiresAt: e.clock.Now().Add(-time.Second)}, lease.ErrInvalidRequest},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := m.Register(ctx, tt.req); !errors.Is(err, tt.want) {
				t.Fatalf("Register = %v, want %v", err, tt.want)
			}
		})
	}
	if ls, _, err := m.List(ctx, lease.ListOptions{}); err != nil || len(ls) != 2 {
		t.Fatalf("leases after refused registrations: %d, %v; want the 2 registered", len(ls), err)
	}

	// On request.
	if err := m.Revoke(ctx, forever.ID); err != nil {
		t.Fatal(err)
	}
	if e.b.has("s-forever") {
		t.Fatal("revoked lease's secret still exists")
	}
	// At expiry, an hour on.
	m.Start(ctx)
	e.clock.Add(time.Hour + time.Second)
	waitFor(t, 5*time.Second, "registered lease expired", func() bool { return state(t, m, hour.ID) == storage.LeaseRevoked })
	if e.b.has("s-hour") {
		t.Fatal("expired lease's secret still exists")
	}
}

// TestRegisterRenewable: a registered lease with a max expiry renews up to
// that max and no further; without one it is not renewable at all.
func TestRegisterRenewable(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("ext", "test", nil)
	m := e.manager(nil)
	for _, name := range []string{"s-renew", "s-fixed"} {
		e.b.live[name] = time.Time{}
	}
	start := e.clock.Now().UTC().Truncate(time.Microsecond)
	l, err := m.Register(ctx, lease.RegisterRequest{Mount: "ext", Role: "kind", Name: "r",
		ExpiresAt: start.Add(time.Hour), MaxExpiresAt: start.Add(3 * time.Hour), Revocation: []byte("s-renew")})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Renewable || !l.MaxExpiresAt.Equal(start.Add(3*time.Hour)) {
		t.Fatalf("registered lease %+v: want renewable up to +3h", l)
	}
	fixed, err := m.Register(ctx, lease.RegisterRequest{Mount: "ext", Role: "kind", Name: "f",
		ExpiresAt: start.Add(time.Hour), MaxExpiresAt: start.Add(time.Hour), Revocation: []byte("s-fixed")})
	if err != nil {
		t.Fatal(err)
	}
	if fixed.Renewable {
		t.Fatalf("lease whose max equals its expiry is renewable: %+v", fixed)
	}
	if _, err := m.Renew(ctx, fixed.ID, time.Hour); !errors.Is(err, lease.ErrNotRenewable) {
		t.Fatalf("renew of a fixed lease = %v, want ErrNotRenewable", err)
	}

	steps := []struct {
		name      string
		advance   time.Duration
		increment time.Duration
		want      time.Duration // expiry after the renewal, from start
		err       error
	}{
		{"within max", 30 * time.Minute, time.Hour, 90 * time.Minute, nil},
		{"capped at max", 50 * time.Minute, 5 * time.Hour, 3 * time.Hour, nil},
		{"at max already", time.Hour, time.Hour, 3 * time.Hour, nil},
		{"past max", 41 * time.Minute, time.Hour, 0, lease.ErrNotActive},
	}
	for _, s := range steps {
		e.clock.Add(s.advance)
		got, err := m.Renew(ctx, l.ID, s.increment)
		if s.err != nil {
			if !errors.Is(err, s.err) {
				t.Fatalf("%s: Renew = %v, want %v", s.name, err, s.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		// The test clock runs with real time on top of its advances.
		if d := got.ExpiresAt.Sub(start.Add(s.want)); d < 0 || d > 5*time.Second {
			t.Fatalf("%s: expiry %s, want start+%s", s.name, got.ExpiresAt, s.want)
		}
	}
}
