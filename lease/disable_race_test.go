package lease_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/pausepoint"
	"github.com/sigil-ca/sigil/lease"
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
	if err := e.reg.Register("paused-prepare", func(engines.Env) (engines.Engine, error) { return g, nil }); err != nil {
		t.Fatal(err)
	}
	e.mount("db", "paused-prepare", map[string]map[string]string{"r": {"ttl": "1h"}})
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
