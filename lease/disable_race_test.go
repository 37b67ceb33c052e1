package lease_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/pausepoint"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// pausedPrepareEngine is the test engine whose Prepare holds at a pause
// point: a mint that has bound its mount but stored nothing yet.
type pausedPrepareEngine struct {
	testEngine
	p *pausepoint.Point
}

func (e *pausedPrepareEngine) Prepare(ctx context.Context, r engines.Role, req engines.MintRequest) (*engines.Pending, error) {
	e.p.Here()
	return e.testEngine.Prepare(ctx, r, req)
}

// TestMintRacingDisable: a mount disabled (by another node's Mounts, over
// the same store) while a mint on it is between binding the mount and
// storing its lease: the mint stops before anything exists. Before, the
// mint went on with its cached engine, created the credential and
// activated a lease whose mount, needed to revoke it, was gone: the
// credential was never revoked.
func TestMintRacingDisable(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	g := &pausedPrepareEngine{testEngine: testEngine{e.b}, p: &pausepoint.Point{}}
	e.mountEngine("db", g, map[string]map[string]string{"r": {"ttl": "1h"}})
	m := e.manager(nil)
	other := engines.NewMounts(e.store, e.bar, e.reg, engines.Services{}, nil)
	t.Cleanup(func() { _ = other.Close() })

	mintErr, disableErr := g.p.Interleave(func() error {
		_, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
		return err
	}, func() error {
		return other.Disable(ctx, "db", nil)
	})
	if disableErr != nil {
		t.Fatalf("disable with no lease stored yet: %v", disableErr)
	}
	if !errors.Is(mintErr, engines.ErrMountNotFound) {
		t.Errorf("mint on a mount disabled meanwhile: %v, want ErrMountNotFound", mintErr)
	}
	if n := e.b.count(); n != 0 {
		t.Errorf("%d credentials created for a disabled mount", n)
	}
	if n, err := e.store.Leases().CountActive(ctx, "db/"); err != nil || n != 0 {
		t.Errorf("%d open leases under the disabled mount (%v)", n, err)
	}
}

// TestDisableRefusesIrrevocable: a mount with an irrevocable lease (its
// secret may still exist in the backend) is not disabled, since a retry of
// that revocation needs the mount's configuration; once the lease is
// revoked again it is. Before, Disable counted only active and pending
// leases and deleted the configuration, so the secret could never be
// revoked through Sigil.
func TestDisableRefusesIrrevocable(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.mount("db", "test", map[string]map[string]string{"r": {"ttl": "1h"}})
	m := e.manager(nil)
	got, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "r"})
	if err != nil {
		t.Fatal(err)
	}
	id := got.Lease.ID
	// Its revocation fails until the worker gives up.
	e.b.failRev.Store(true)
	for range 3 {
		_ = m.Revoke(ctx, id)
	}
	if s := state(t, m, id); s != storage.LeaseIrrevocable {
		t.Fatalf("lease is %s after failed revocations, want irrevocable", s)
	}
	err = e.mounts.Disable(ctx, "db", nil)
	if !errors.Is(err, engines.ErrMountInUse) || !strings.Contains(err.Error(), id) {
		t.Fatalf("disable with an irrevocable lease: %v, want ErrMountInUse naming %s", err, id)
	}
	if !e.b.has(got.Data["username"]) {
		t.Fatal("the test backend lost the credential")
	}
	// The backend answers again: revoking the lease again works, through
	// the mount that is still there, and then the mount can go.
	e.b.failRev.Store(false)
	if err := m.Revoke(ctx, id); err != nil {
		t.Fatalf("revoke again: %v", err)
	}
	if e.b.has(got.Data["username"]) {
		t.Fatal("the credential outlived its revocation")
	}
	if err := e.mounts.Disable(ctx, "db", nil); err != nil {
		t.Fatalf("disable after the lease was revoked: %v", err)
	}
}
