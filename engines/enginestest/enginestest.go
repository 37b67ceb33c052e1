// Package enginestest gives engine tests the real stack an engine runs on:
// an SQLite store in a temporary directory, an unsealed barrier, and Mounts
// with the engine types the test registers.
package enginestest

import (
	"context"
	"testing"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/storage"
)

// Stack is an opened store, barrier, registry and mount manager.
type Stack struct {
	Store   storage.Store
	Barrier *barrier.Barrier
	Reg     *engines.Registry
	Mounts  *engines.Mounts
}

// New opens a Stack; register adds engine types to its registry. svc may
// use the barrier (for a soft keystore), so it is built by a function.
func New(t testing.TB, svc func(*barrier.Barrier) engines.Services, register ...func(*engines.Registry) error) *Stack {
	t.Helper()
	st, bar := barriertest.New(t)
	reg := engines.NewRegistry()
	for _, r := range register {
		if err := r(reg); err != nil {
			t.Fatal(err)
		}
	}
	var s engines.Services
	if svc != nil {
		s = svc(bar)
	}
	return &Stack{Store: st, Barrier: bar, Reg: reg, Mounts: engines.NewMounts(st, bar, reg, s, nil)}
}

// Mount enables typ at path and returns its running engine.
func (s *Stack) Mount(t testing.TB, path, typ string) engines.Engine {
	t.Helper()
	ctx := context.Background()
	if err := s.Mounts.Enable(ctx, path, typ); err != nil {
		t.Fatal(err)
	}
	eng, err := s.Mounts.Engine(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}
