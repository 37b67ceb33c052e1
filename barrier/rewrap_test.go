package barrier_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/storage"
)

// rewrapStack is an unsealed barrier over a real SQLite store whose
// settings hold the sealed values.
func rewrapStack(t *testing.T) (*barrier.Barrier, storage.Settings) {
	t.Helper()
	st, b := barriertest.New(t)
	return b, st.Settings()
}

func putSealed(t *testing.T, b *barrier.Barrier, s storage.Settings, kind, key string) {
	t.Helper()
	ctx := context.Background()
	v, err := b.Seal(ctx, kind, key, []byte("secret "+key))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, key, v); err != nil {
		t.Fatal(err)
	}
}

// racing is a source over real settings that lets another writer replace
// the value between the listing and the swap, as a second node could.
type racing struct {
	storage.SealedSettings
	b *barrier.Barrier
}

func (r racing) EachSealed(ctx context.Context, visit func(string, []byte, func(context.Context, []byte, []byte) error) error) error {
	return r.SealedSettings.EachSealed(ctx, func(id string, sealed []byte, swap func(context.Context, []byte, []byte) error) error {
		fresh, err := r.b.Seal(ctx, "raced", id, []byte("written meanwhile"))
		if err != nil {
			return err
		}
		if err := r.Settings.Put(ctx, id, fresh); err != nil {
			return err
		}
		return visit(id, sealed, swap)
	})
}

// TestRewrapAll: every registered source's values move to the active key
// (a kind may have several sources); a value replaced by another writer
// meanwhile is left as that writer stored it; kinds sealed without a
// source are reported.
func TestRewrapAll(t *testing.T) {
	ctx := context.Background()
	b, s := rewrapStack(t)
	for _, k := range []string{"a/1", "a/2", "a/3"} {
		putSealed(t, b, s, "prefixed", k)
	}
	putSealed(t, b, s, "fixed", "one")
	putSealed(t, b, s, "fixed", "two")
	putSealed(t, b, s, "raced", "race")
	putSealed(t, b, s, "orphan", "nobody-rewraps-me")

	b.RegisterRewrapper("prefixed", storage.SealedSettings{Settings: s, Prefix: "a/"})
	b.RegisterRewrapper("fixed", storage.SealedSettings{Settings: s, Keys: []string{"one", "absent"}})
	b.RegisterRewrapper("fixed", storage.SealedSettings{Settings: s, Keys: []string{"two"}})
	b.RegisterRewrapper("raced", racing{storage.SealedSettings{Settings: s, Keys: []string{"race"}}, b})

	if got, want := b.RewrapKinds(), []string{"fixed", "prefixed", "raced"}; !slices.Equal(got, want) {
		t.Fatalf("RewrapKinds = %v, want %v", got, want)
	}
	if got := b.UnregisteredKinds(); !slices.Equal(got, []string{"orphan"}) {
		t.Fatalf("UnregisteredKinds = %v, want [orphan]", got)
	}
	if _, err := b.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := b.RewrapAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rewrapped != 6 || st.Current != 0 {
		t.Fatalf("RewrapAll = %+v, want 6 rewrapped", st)
	}
	for _, k := range []string{"a/1", "a/2", "a/3", "one", "two", "race", "nobody-rewraps-me"} {
		v, err := s.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if want := k != "nobody-rewraps-me"; b.NeedsRewrap(v) == want {
			t.Errorf("%s: NeedsRewrap = %v after RewrapAll", k, !want)
		}
		kind, plain := map[string]string{"one": "fixed", "two": "fixed", "race": "raced", "nobody-rewraps-me": "orphan"}[k], "secret "+k
		if kind == "" {
			kind = "prefixed"
		}
		if k == "race" {
			plain = "written meanwhile"
		}
		got, err := b.Open(ctx, kind, k, v)
		if err != nil || !bytes.Equal(got, []byte(plain)) {
			t.Errorf("%s: opens to %q, %v; want %q", k, got, err, plain)
		}
	}
	// Once rewrapped, everything is current (the racing writer used the
	// active key too).
	again, err := b.RewrapAll(ctx)
	if err != nil || again.Rewrapped != 0 || again.Current != 6 {
		t.Fatalf("second RewrapAll = %+v, %v; want 6 current", again, err)
	}
}

// TestRewrapAllStopsOnMisplacedValue: a value copied under another record's
// name fails to open, and RewrapAll reports it by kind and id instead of
// sealing it afresh under the wrong record.
func TestRewrapAllStopsOnMisplacedValue(t *testing.T) {
	ctx := context.Background()
	b, s := rewrapStack(t)
	putSealed(t, b, s, "k", "x/good")
	v, err := b.Seal(ctx, "k", "elsewhere", []byte("moved"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "x/moved", v); err != nil {
		t.Fatal(err)
	}
	b.RegisterRewrapper("k", storage.SealedSettings{Settings: s, Prefix: "x/"})
	if _, err := b.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = b.RewrapAll(ctx)
	if !errors.Is(err, barrier.ErrIntegrity) || !bytes.Contains([]byte(err.Error()), []byte(`k "x/moved"`)) {
		t.Fatalf("RewrapAll = %v, want ErrIntegrity naming k \"x/moved\"", err)
	}
	if after, _ := s.Get(ctx, "x/moved"); !bytes.Equal(after, v) {
		t.Fatal("the misplaced value was rewritten")
	}
}
