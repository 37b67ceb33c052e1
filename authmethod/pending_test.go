package authmethod_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/barrier/barriertest"
)

// pendingClock is a settable clock for the started-login store.
type pendingClock struct{ ahead atomic.Int64 }

func (c *pendingClock) now() time.Time { return time.Now().Add(time.Duration(c.ahead.Load())) }

// TestPendingStore: a started login (OIDC state, nonce, verifier) kept in
// storage works once, from any store over the same storage (any node),
// not after it expires, and is stored sealed under a hashed key.
func TestPendingStore(t *testing.T) {
	ctx := t.Context()
	st, b := barriertest.New(t)
	clock := &pendingClock{}
	nodeA := authmethod.NewSettingsPending(st.Settings(), b, "sso", clock.now)
	nodeB := authmethod.NewSettingsPending(st.Settings(), b, "sso", clock.now)
	other := authmethod.NewSettingsPending(st.Settings(), b, "other", clock.now)
	secret := []byte(`{"verifier":"pkce-verifier-secret-value"}`)

	if err := nodeA.Put(ctx, "state-1", secret, clock.now().Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Sealed, under a name that is not the state.
	keys, err := st.Settings().List(ctx, "authmethod.pending/")
	if err != nil || len(keys) != 1 || strings.Contains(keys[0], "state-1") {
		t.Fatalf("stored keys %v, %v: want one, not naming the state", keys, err)
	}
	raw, err := st.Settings().Get(ctx, keys[0])
	if err != nil || bytes.Contains(raw, []byte("pkce-verifier")) {
		t.Fatalf("stored started login is not sealed: %v", err)
	}

	// The barrier's rewrap finds it (a key rotation keeps it readable).
	var visited []string
	if err := authmethod.PendingRewrapper(st.Settings()).EachSealed(ctx, func(id string, _ []byte, _ func(context.Context, []byte, []byte) error) error {
		visited = append(visited, id)
		return nil
	}); err != nil || len(visited) != 1 || visited[0] != keys[0] {
		t.Fatalf("rewrapper visited %v, %v; want %v", visited, err, keys)
	}

	steps := []struct {
		name  string
		store authmethod.PendingStore
		state string
		want  []byte
	}{
		{"another mount cannot take it", other, "state-1", nil},
		{"another node finishes it", nodeB, "state-1", secret},
		{"single use", nodeA, "state-1", nil},
		{"never started", nodeA, "state-2", nil},
	}
	for _, s := range steps {
		got, err := s.store.Take(ctx, s.state)
		switch {
		case s.want == nil && !errors.Is(err, authmethod.ErrPendingNotFound):
			t.Fatalf("%s: Take = %q, %v; want ErrPendingNotFound", s.name, got, err)
		case s.want != nil && (err != nil || !bytes.Equal(got, s.want)):
			t.Fatalf("%s: Take = %q, %v; want %q", s.name, got, err, s.want)
		}
	}

	// Expiry.
	if err := nodeA.Put(ctx, "state-3", secret, clock.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	clock.ahead.Add(int64(time.Minute + time.Second))
	if _, err := nodeB.Take(ctx, "state-3"); !errors.Is(err, authmethod.ErrPendingNotFound) {
		t.Fatalf("expired started login: %v, want ErrPendingNotFound", err)
	}
}

// TestPendingStoreRace: of callbacks racing with one state on several
// nodes, exactly one gets the login.
func TestPendingStoreRace(t *testing.T) {
	ctx := t.Context()
	st, b := barriertest.New(t)
	stores := []authmethod.PendingStore{
		authmethod.NewSettingsPending(st.Settings(), b, "sso", nil),
		authmethod.NewSettingsPending(st.Settings(), b, "sso", nil),
	}
	for round := range 5 {
		state := fmt.Sprintf("race-%d", round)
		if err := stores[0].Put(ctx, state, []byte("x"), time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		var wins atomic.Int64
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := stores[i%2].Take(ctx, state)
				if err == nil {
					wins.Add(1)
				} else if !errors.Is(err, authmethod.ErrPendingNotFound) {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d callbacks took the same state, want 1", round, wins.Load())
		}
	}
}

// TestPendingStoreSweep: abandoned started logins do not accumulate: once
// enough have, a new one sweeps out the expired.
func TestPendingStoreSweep(t *testing.T) {
	ctx := t.Context()
	st, b := barriertest.New(t)
	clock := &pendingClock{}
	p := authmethod.NewSettingsPending(st.Settings(), b, "sso", clock.now)
	for i := range 300 {
		if err := p.Put(ctx, fmt.Sprintf("abandoned-%d", i), []byte("x"), clock.now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	clock.ahead.Add(int64(2 * time.Minute))
	if err := p.Put(ctx, "fresh", []byte("y"), clock.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	keys, err := st.Settings().List(ctx, "authmethod.pending/sso/")
	if err != nil || len(keys) != 1 {
		t.Fatalf("started logins after the sweep: %d, %v; want only the fresh one", len(keys), err)
	}
	if got, err := p.Take(ctx, "fresh"); err != nil || string(got) != "y" {
		t.Fatalf("fresh login after the sweep: %q, %v", got, err)
	}
}
