package authmethod_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/barrier/barriertest"
)

// slowType builds methods that, while block is set, wait in New for
// release: a method whose backend is slow to answer at build time.
type slowType struct {
	block   *atomic.Bool
	entered chan struct{}
	release chan struct{}
	closed  *atomic.Int32
}

func (slowType) Name() string { return "slow" }
func (slowType) CheckConfig(_ context.Context, cfg map[string]string) (map[string]string, error) {
	return cfg, nil
}
func (slowType) CheckRole(_, f map[string]string) (map[string]string, error) { return f, nil }
func (s slowType) New(ctx context.Context, _ string, _ map[string]string) (authmethod.Method, error) {
	if s.block.Load() {
		s.entered <- struct{}{}
		<-s.release
	}
	return slowMethod{s.closed}, nil
}

type slowMethod struct{ closed *atomic.Int32 }

func (slowMethod) Login(context.Context, authmethod.Credentials, authmethod.RoleLoader) (*authmethod.Identity, error) {
	return nil, nil
}
func (m slowMethod) Close() error { m.closed.Add(1); return nil }

// TestMethodBuiltAfterClose: a method whose build ends after the manager
// closed (a seal during a login) is closed, not cached where nobody would
// close it, and the login fails.
func TestMethodBuiltAfterClose(t *testing.T) {
	ctx := context.Background()
	st, b := barriertest.New(t)
	var block atomic.Bool
	var closed atomic.Int32
	typ := slowType{block: &block, entered: make(chan struct{}, 1), release: make(chan struct{}), closed: &closed}
	reg, err := authmethod.NewRegistry(typ)
	if err != nil {
		t.Fatal(err)
	}
	m := authmethod.NewManager(authmethod.Options{Settings: st.Settings(), Sealer: b, Registry: reg})
	if err := m.Enable(ctx, "s", "slow"); err != nil {
		t.Fatal(err)
	}
	if err := m.Configure(ctx, "s", map[string]string{"url": "x"}); err != nil {
		t.Fatal(err)
	}
	block.Store(true)
	done := make(chan error, 1)
	go func() { _, err := m.Login(ctx, "127.0.0.1", "s", authmethod.Credentials{Role: "r"}); done <- err }()
	<-typ.entered
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	before := closed.Load()
	close(typ.release)
	if err := <-done; err == nil {
		t.Fatal("a login went on with a method built after Close")
	}
	if got := closed.Load() - before; got != 1 {
		t.Fatalf("the method built after Close was closed %d times, want once", got)
	}
}
