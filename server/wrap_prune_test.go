package server

import (
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/core"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage"
)

// TestWrapPruneDeletesDeadSlots (security review #12): the pruning pass
// deletes a wrapped response's sealed secret once its wrapping token has
// expired unused or been used, against the real SQLite store and barrier,
// and keeps a live one.
func TestWrapPruneDeletesDeadSlots(t *testing.T) {
	tests := []struct {
		name string
		ttl  time.Duration
		// after acts on the wrapping token before pruning.
		after func(t *testing.T, a *core.Unsealed, st storage.Store, tok, slot string)
		// clock is how far past now the pruner runs.
		clock time.Duration
		// passes of the pruner, and whether the slot is gone after each.
		gone []bool
	}{
		{name: "live", ttl: time.Hour, gone: []bool{false, false}},
		{name: "expired unused", ttl: time.Minute, clock: 2 * time.Minute, gone: []bool{true}},
		{name: "unwrapped", ttl: time.Hour, after: func(t *testing.T, a *core.Unsealed, st storage.Store, tok, slot string) {
			// What Unwrap does: spend the token, then empty the slot.
			if _, err := a.Tokens.VerifyPurpose(t.Context(), tok, "wrap"); err != nil {
				t.Fatal(err)
			}
			old, err := st.Settings().Get(t.Context(), slot)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Settings().Replace(t.Context(), slot, old, []byte{}); err != nil {
				t.Fatal(err)
			}
		}, gone: []bool{true}},
		{name: "token spent, slot never consumed", ttl: time.Hour, after: func(t *testing.T, a *core.Unsealed, _ storage.Store, tok, _ string) {
			// An unwrap that crashed between spending the token and
			// consuming the slot; a live unwrap looks the same for a
			// moment, so the slot goes on the second pass.
			if _, err := a.Tokens.VerifyPurpose(t.Context(), tok, "wrap"); err != nil {
				t.Fatal(err)
			}
		}, gone: []bool{false, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s, a := wrapPruneServer(t)
			before, err := s.store.Settings().List(ctx, wrapSettingPx)
			if err != nil {
				t.Fatal(err)
			}
			tok, _, err := s.wrap(ctx, a, &sigilv1.CredsResponse{LeaseId: "db/ro/x"}, map[string]string{"password": "canary"}, tc.ttl)
			if err != nil {
				t.Fatal(err)
			}
			after, err := s.store.Settings().List(ctx, wrapSettingPx)
			if err != nil {
				t.Fatal(err)
			}
			after = slices.DeleteFunc(after, func(k string) bool { return slices.Contains(before, k) })
			if len(after) != 1 {
				t.Fatalf("wrap made slots %v, want one", after)
			}
			slot := after[0]
			tokenID := slot[len(wrapSettingPx):]
			if v, err := s.store.Settings().Get(ctx, slot); err != nil || len(v) == 0 {
				t.Fatalf("slot %s before pruning: %d bytes, %v", slot, len(v), err)
			}
			if tc.after != nil {
				tc.after(t, a, s.store, tok, slot)
			}
			p := newWrapPruner(s.store, a.Tokens, s.log)
			p.now = func() time.Time { return time.Now().Add(tc.clock) }
			for i, wantGone := range tc.gone {
				if _, err := p.prune(ctx); err != nil {
					t.Fatalf("pass %d: %v", i+1, err)
				}
				_, err := s.store.Settings().Get(ctx, slot)
				if gone := errors.Is(err, storage.ErrNotFound); gone != wantGone {
					t.Fatalf("pass %d: slot gone = %v (%v), want %v", i+1, gone, err, wantGone)
				}
			}
			if tc.gone[len(tc.gone)-1] {
				if _, err := s.store.Tokens().Get(ctx, tokenID); !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("wrapping token %s still stored after pruning: %v", tokenID, err)
				}
			} else if _, err := a.Tokens.VerifyPurpose(ctx, tok, "wrap"); err != nil {
				t.Fatalf("live wrapping token no longer verifies: %v", err)
			}
		})
	}
}

// wrapPruneServer is the part of a Server that wrapping uses, on a real
// SQLite store and an unsealed barrier.
func wrapPruneServer(t *testing.T) (*Server, *core.Unsealed) {
	t.Helper()
	st, b := barriertest.New(t)
	return &Server{store: st, barrier: b, log: slog.New(slog.DiscardHandler)}, &core.Unsealed{Tokens: auth.NewTokens(st, b)}
}
