package core

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqlite"
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
		after func(t *testing.T, a *Unsealed, st storage.Store, tok, slot string)
		// clock is how far past now the pruner runs.
		clock time.Duration
		// passes of the pruner, and whether the slot is gone after each.
		gone []bool
	}{
		{name: "live", ttl: time.Hour, gone: []bool{false, false}},
		{name: "expired unused", ttl: time.Minute, clock: 2 * time.Minute, gone: []bool{true}},
		{name: "unwrapped", ttl: time.Hour, after: func(t *testing.T, a *Unsealed, st storage.Store, tok, slot string) {
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
		{name: "token spent, slot never consumed", ttl: time.Hour, after: func(t *testing.T, a *Unsealed, _ storage.Store, tok, _ string) {
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
			c, a := wrapPruneCore(t)
			before, err := c.opts.Store.Settings().List(ctx, WrapSettingPrefix)
			if err != nil {
				t.Fatal(err)
			}
			tok, _, err := c.wrap(ctx, Secret{BindingID: "db/ro/x", Data: map[string]string{"password": "canary"}}, tc.ttl)
			if err != nil {
				t.Fatal(err)
			}
			after, err := c.opts.Store.Settings().List(ctx, WrapSettingPrefix)
			if err != nil {
				t.Fatal(err)
			}
			after = slices.DeleteFunc(after, func(k string) bool { return slices.Contains(before, k) })
			if len(after) != 1 {
				t.Fatalf("wrap made slots %v, want one", after)
			}
			slot := after[0]
			tokenID := slot[len(WrapSettingPrefix):]
			if v, err := c.opts.Store.Settings().Get(ctx, slot); err != nil || len(v) == 0 {
				t.Fatalf("slot %s before pruning: %d bytes, %v", slot, len(v), err)
			}
			if tc.after != nil {
				tc.after(t, a, c.opts.Store, tok, slot)
			}
			p := newWrapPruner(c.opts.Store, a.Tokens, c.log)
			p.now = func() time.Time { return time.Now().Add(tc.clock) }
			for i, wantGone := range tc.gone {
				if _, err := p.prune(ctx); err != nil {
					t.Fatalf("pass %d: %v", i+1, err)
				}
				_, err := c.opts.Store.Settings().Get(ctx, slot)
				if gone := errors.Is(err, storage.ErrNotFound); gone != wantGone {
					t.Fatalf("pass %d: slot gone = %v (%v), want %v", i+1, gone, err, wantGone)
				}
			}
			if tc.gone[len(tc.gone)-1] {
				if _, err := c.opts.Store.Tokens().Get(ctx, tokenID); !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("wrapping token %s still stored after pruning: %v", tokenID, err)
				}
			} else if _, err := a.Tokens.VerifyPurpose(ctx, tok, "wrap"); err != nil {
				t.Fatalf("live wrapping token no longer verifies: %v", err)
			}
		})
	}
}

// wrapPruneCore is a Core unsealed over a real SQLite store and barrier,
// with only the token store in its graph (all that wrapping uses).
func wrapPruneCore(t *testing.T) (*Core, *Unsealed) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := barrier.New(adapt.Keyring(st.Keyring()))
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	if err := b.Unseal(ctx, master); err != nil {
		t.Fatal(err)
	}
	u := &Unsealed{Tokens: auth.NewTokens(st, b)}
	return &Core{opts: Options{Store: st, Barrier: b}, log: slog.New(slog.DiscardHandler), u: u}, u
}
