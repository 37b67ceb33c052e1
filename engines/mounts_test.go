package engines_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/storage"
)

// stub is a minimal engine: it validates config and roles and mints
// nothing; the mint/revoke contract is tested in package lease.
type stub struct{ closed *int }

func (stub) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	if cfg["bad"] != "" {
		return nil, engines.ErrInvalidConfig
	}
	return cfg, nil
}

func (stub) ValidateRole(_ context.Context, _ string, f map[string]string) (map[string]string, error) {
	if v, ok := f["ttl"]; ok {
		if _, err := time.ParseDuration(v); err != nil {
			return nil, fmt.Errorf("%w: ttl", engines.ErrInvalidConfig)
		}
	}
	return f, nil
}

func (stub) Prepare(context.Context, engines.Role, engines.MintRequest) (*engines.Pending, error) {
	return nil, engines.ErrNotSupported
}
func (stub) Create(context.Context, *engines.Pending) (*engines.Secret, error) {
	return nil, engines.ErrNotSupported
}
func (stub) Renew(context.Context, []byte, time.Time) error { return engines.ErrNotSupported }
func (stub) Revoke(context.Context, []byte) error           { return nil }
func (s stub) Close() error {
	*s.closed++
	return nil
}

type env struct {
	store  storage.Store
	bar    *barrier.Barrier
	reg    *engines.Registry
	mounts *engines.Mounts
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, bar := barriertest.New(t)
	reg := engines.NewRegistry()
	closed := 0
	if err := reg.Register("test", func(engines.Env) (engines.Engine, error) { return stub{&closed}, nil }); err != nil {
		t.Fatal(err)
	}
	return &env{store: st, bar: bar, reg: reg, mounts: engines.NewMounts(st, bar, reg, engines.Services{}, nil)}
}

func (e *env) mount(t *testing.T, path, typ string) {
	t.Helper()
	if err := e.mounts.Enable(context.Background(), path, typ); err != nil {
		t.Fatal(err)
	}
}

func TestRegistry(t *testing.T) {
	r := engines.NewRegistry()
	f := func(engines.Env) (engines.Engine, error) { return stub{new(int)}, nil }
	for _, typ := range []string{"b", "a"} {
		if err := r.Register(typ, f); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(r.Types(), ","); got != "a,b" {
		t.Errorf("Types = %s", got)
	}
	if _, err := r.New("c", engines.Env{}); !errors.Is(err, engines.ErrUnknownType) {
		t.Errorf("New unknown: %v", err)
	}
	if _, err := r.New("a", engines.Env{}); err != nil {
		t.Errorf("New: %v", err)
	}
	if err := r.Register("bad/type", f); !errors.Is(err, engines.ErrInvalidPath) {
		t.Errorf("bad type: %v", err)
	}
}

func TestMounts(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if err := e.mounts.Enable(ctx, "db", "nosuch"); !errors.Is(err, engines.ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
	e.mount(t, "team/db", "test")
	for _, p := range []string{"team/db", "team", "team/db/x"} {
		if err := e.mounts.Enable(ctx, p, "test"); !errors.Is(err, engines.ErrMountExists) {
			t.Errorf("overlapping %s: %v", p, err)
		}
	}
	for _, p := range []string{"", "/db", "db/", "a//b", "a/../b", "d b"} {
		if err := e.mounts.Enable(ctx, p, "test"); !errors.Is(err, engines.ErrInvalidPath) {
			t.Errorf("bad path %q: %v", p, err)
		}
	}
	if err := e.mounts.Configure(ctx, "team/db", map[string]string{"url": "x", "bad": "1"}); !errors.Is(err, engines.ErrInvalidConfig) {
		t.Errorf("bad config: %v", err)
	}
	if err := e.mounts.Configure(ctx, "team/db", map[string]string{"url": "x", "n": "1"}); err != nil {
		t.Fatal(err)
	}
	if err := e.mounts.Configure(ctx, "team/db", map[string]string{"n": ""}); err != nil {
		t.Fatal(err)
	}
	if err := e.mounts.WriteRole(ctx, "team/db", "r1", map[string]string{"ttl": "zz"}); !errors.Is(err, engines.ErrInvalidConfig) {
		t.Errorf("bad role: %v", err)
	}
	for i := range 3 {
		if err := e.mounts.WriteRole(ctx, "team/db", "r"+strconv.Itoa(i), map[string]string{"ttl": "1m"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.mounts.DeleteRole(ctx, "team/db", "r1"); err != nil {
		t.Fatal(err)
	}
	if err := e.mounts.DeleteRole(ctx, "team/db", "r1"); !errors.Is(err, engines.ErrRoleNotFound) {
		t.Errorf("delete twice: %v", err)
	}
	// A second node (fresh Mounts over the same store) sees the same state.
	other := engines.NewMounts(e.store, e.bar, e.reg, engines.Services{}, nil)
	roles, err := other.ListRoles(ctx, "team/db")
	if err != nil || strings.Join(roles, ",") != "r0,r2" {
		t.Errorf("roles %v, %v", roles, err)
	}
	cfg, err := other.ReadConfig(ctx, "team/db")
	if err != nil || len(cfg) != 1 || cfg["url"] != "x" {
		t.Errorf("config %v, %v", cfg, err)
	}
	// The stored document is sealed.
	mt, _ := e.store.Mounts().Get(ctx, "team/db")
	if strings.Contains(string(mt.SealedConfig), "r0") {
		t.Error("mount document stored in clear")
	}
	list, err := e.mounts.List(ctx)
	if err != nil || len(list) != 1 || list[0].Type != "test" {
		t.Errorf("list %v, %v", list, err)
	}
	if err := e.mounts.RotateRoot(ctx, "team/db"); !errors.Is(err, engines.ErrNotSupported) {
		t.Errorf("rotate: %v", err)
	}
	if err := e.mounts.Disable(ctx, "team/db", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.mounts.ListRoles(ctx, "team/db"); !errors.Is(err, engines.ErrMountNotFound) {
		t.Errorf("after disable: %v", err)
	}
	if err := e.reg.Register("test", nil); !errors.Is(err, engines.ErrInvalidPath) {
		t.Errorf("register nil: %v", err)
	}
	if err := e.reg.Register("test", func(engines.Env) (engines.Engine, error) { return nil, nil }); !errors.Is(err, engines.ErrDuplicateType) {
		t.Errorf("register twice: %v", err)
	}
}

// TestMountsReservedPaths: no mount may take a top-level API prefix (a
// mount "sys" would make its creds path administrative); Sigil's own token
// engine still mounts at "auth" through EnableInternal.
func TestMountsReservedPaths(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	tests := []struct {
		path     string
		reserved bool
	}{
		{"sys", true}, {"SYS", true}, {"sys/x", true}, {"auth", true}, {"leases", true},
		{"ca", true}, {"acme", true}, {"Acme/x", true},
		{"system", false}, {"authz", false}, {"team/sys", false}, {"cache", false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			err := e.mounts.Enable(ctx, tc.path, "test")
			if tc.reserved {
				if !errors.Is(err, engines.ErrInvalidPath) || !strings.Contains(err.Error(), "reserved") {
					t.Fatalf("Enable(%q) = %v, want a reserved-path error", tc.path, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Enable(%q): %v", tc.path, err)
			}
		})
	}
	if err := e.mounts.EnableInternal(ctx, "auth", "test"); err != nil {
		t.Fatalf("EnableInternal(auth): %v", err)
	}
}

// baseOnly implements only the base Engine interface: no roles, no leased
// secrets, no capabilities (like transit, which has keys instead).
type baseOnly struct{}

func (baseOnly) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	return cfg, nil
}
func (baseOnly) Close() error { return nil }

// TestOptionalInterfaces: what an engine does not implement is refused
// with an error that wraps ErrNotSupported and names the mount and its
// engine type; what it does implement is found.
func TestOptionalInterfaces(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	if err := e.reg.Register("base", func(engines.Env) (engines.Engine, error) { return baseOnly{}, nil }); err != nil {
		t.Fatal(err)
	}
	e.mount(t, "plain", "base")
	e.mount(t, "db", "test")
	if err := e.mounts.WriteRole(ctx, "db", "r", nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		run  func() error
		want []error // all must match
		msg  string  // substring of the message
	}{
		{"bind", func() error { _, err := e.mounts.Bind(ctx, "plain", "r"); return err },
			[]error{engines.ErrNotSupported, engines.ErrInvalidRequest}, "mount plain is a base engine; it mints no leased secrets"},
		{"revoker", func() error { _, err := e.mounts.Revoker(ctx, "plain"); return err },
			[]error{engines.ErrNotSupported, engines.ErrInvalidRequest}, "mount plain is a base engine; it has no leases"},
		{"revoker present", func() error { _, err := e.mounts.Revoker(ctx, "db"); return err }, nil, ""},
		{"write role", func() error { return e.mounts.WriteRole(ctx, "plain", "r", nil) },
			[]error{engines.ErrNotSupported, engines.ErrInvalidRequest}, "mount plain is a base engine; it has no roles"},
		{"capability missing", func() error {
			_, err := engines.Capability[engines.Transit](ctx, e.mounts, "db", "transit operations need a transit mount")
			return err
		}, []error{engines.ErrNotSupported, engines.ErrInvalidRequest}, "mount db is a test engine; transit operations need a transit mount"},
		{"capability of unknown mount", func() error {
			_, err := engines.Capability[engines.Transit](ctx, e.mounts, "nope", "transit operations need a transit mount")
			return err
		}, []error{engines.ErrMountNotFound}, "nope"},
		{"bind leased", func() error { _, err := e.mounts.Bind(ctx, "db", "r"); return err }, nil, ""},
		{"capability present", func() error {
			_, err := engines.Capability[engines.Leased](ctx, e.mounts, "db", "leases need a leased mount")
			return err
		}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("err = %v, want %v", err, w)
				}
			}
			if err != nil && !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %q, want it to say %q", err, tt.msg)
			}
		})
	}
	var ce *engines.CapabilityError
	_, err := engines.Capability[engines.SSHSigner](ctx, e.mounts, "plain", "ssh signing needs a keys mount")
	if !errors.As(err, &ce) || ce.Mount != "plain" || ce.Type != "base" {
		t.Errorf("CapabilityError = %#v (%v)", ce, err)
	}
}

// slowConf is a stub whose Configure, while block is set, waits for
// release (or its context): a backend that does not answer.
type slowConf struct {
	stub
	block   *atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (s slowConf) Configure(ctx context.Context, cfg map[string]string) (map[string]string, error) {
	if s.block.Load() {
		s.entered <- struct{}{}
		select {
		case <-s.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return cfg, nil
}

// TestSlowMountDoesNotStallOthers: while one mount's engine is being built
// on a node (its Configure waiting on an unresponsive backend, as after a
// restart), another mount's engine is still served: building holds that
// mount only, not every mount of the node.
func TestSlowMountDoesNotStallOthers(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	var block atomic.Bool
	slow := slowConf{stub: stub{new(int)}, block: &block, entered: make(chan struct{}, 1), release: make(chan struct{})}
	if err := e.reg.Register("slow", func(engines.Env) (engines.Engine, error) { return slow, nil }); err != nil {
		t.Fatal(err)
	}
	e.mount(t, "s", "slow")
	if err := e.mounts.Configure(ctx, "s", map[string]string{"url": "x"}); err != nil {
		t.Fatal(err)
	}
	e.mount(t, "t", "test")

	// Another node (or this one after a restart) builds both engines anew.
	other := engines.NewMounts(e.store, e.bar, e.reg, engines.Services{}, nil)
	t.Cleanup(func() { other.Close() })
	block.Store(true)
	slowDone := make(chan error, 1)
	go func() { _, err := other.Engine(ctx, "s"); slowDone <- err }()
	<-slow.entered
	fast := make(chan error, 1)
	go func() { _, err := other.Engine(ctx, "t"); fast <- err }()
	select {
	case err := <-fast:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(slow.release)
		<-slowDone
		t.Fatal("mount t waited for mount s's engine to be built")
	}
	close(slow.release)
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
}

// TestBuildFinishingAfterClose: an engine whose build was under way when
// the mounts closed (a seal) is closed itself, not left running in a cache
// nobody will close again.
func TestBuildFinishingAfterClose(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	var block atomic.Bool
	closed := 0
	slow := slowConf{stub: stub{&closed}, block: &block, entered: make(chan struct{}, 1), release: make(chan struct{})}
	if err := e.reg.Register("slow", func(engines.Env) (engines.Engine, error) { return slow, nil }); err != nil {
		t.Fatal(err)
	}
	e.mount(t, "s", "slow")
	if err := e.mounts.Configure(ctx, "s", map[string]string{"url": "x"}); err != nil {
		t.Fatal(err)
	}
	other := engines.NewMounts(e.store, e.bar, e.reg, engines.Services{}, nil)
	block.Store(true)
	done := make(chan error, 1)
	go func() { _, err := other.Engine(ctx, "s"); done <- err }()
	<-slow.entered
	before := closed
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	close(slow.release)
	if err := <-done; err == nil {
		t.Fatal("an engine built after Close was handed out")
	}
	if closed != before+1 {
		t.Fatalf("the engine built after Close was closed %d times, want once", closed-before)
	}
}
