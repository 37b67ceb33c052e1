package engines_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/storage"
)

// envOf mounts a test engine at path and returns the Env its factory got.
func envOf(t *testing.T, e *env, typ, path string) engines.Env {
	t.Helper()
	var got engines.Env
	if err := e.reg.Register(typ, func(env engines.Env) (engines.Engine, error) {
		got = env
		return stub{new(int)}, nil
	}); err != nil {
		t.Fatal(err)
	}
	e.mount(t, path, typ)
	if _, err := e.mounts.Engine(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	if got.Store == nil {
		t.Fatal("engine got no Store")
	}
	return got
}

func TestEngineStore(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := envOf(t, e, "kv-a", "a").Store
	ab := envOf(t, e, "kv-ab", "ab").Store

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("put", a.Put(ctx, "keys/k1", []byte("secret-1")))
	must("create", a.Create(ctx, "keys/k2", []byte("secret-2")))
	if err := a.Create(ctx, "keys/k2", []byte("x")); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("create existing: %v", err)
	}
	must("put other mount", ab.Put(ctx, "keys/k1", []byte("other")))

	v, err := a.Get(ctx, "keys/k1")
	must("get", err)
	if string(v) != "secret-1" {
		t.Fatalf("get = %q", v)
	}
	keys, err := a.List(ctx, "keys/")
	must("list", err)
	if fmt.Sprint(keys) != "[keys/k1 keys/k2]" {
		t.Fatalf("mount a lists %v (must not see ab's keys)", keys)
	}

	if err := a.Replace(ctx, "keys/k1", []byte("stale"), []byte("new")); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("replace with stale old value: %v", err)
	}
	must("replace", a.Replace(ctx, "keys/k1", []byte("secret-1"), []byte("new")))

	// Nothing is stored in clear, and a value copied to another key does
	// not open there.
	raw, err := e.store.Settings().Get(ctx, engines.DataSettingPrefix+"a#keys/k1")
	must("raw get", err)
	if bytes.Contains(raw, []byte("new")) {
		t.Fatal("engine data stored in clear")
	}
	must("copy row", e.store.Settings().Put(ctx, engines.DataSettingPrefix+"a#keys/k2", raw))
	if _, err := a.Get(ctx, "keys/k2"); err == nil {
		t.Fatal("a value copied to another key opened")
	}

	for _, bad := range []string{"", "nul\x00key", string(make([]byte, 300))} {
		if err := a.Put(ctx, bad, nil); !errors.Is(err, engines.ErrInvalidPath) {
			t.Errorf("Put(%q): %v, want ErrInvalidPath", bad, err)
		}
	}

	// Disabling a mount deletes its data and nobody else's.
	must("disable", e.mounts.Disable(ctx, "a", nil))
	left, err := e.store.Settings().List(ctx, engines.DataSettingPrefix)
	must("list all", err)
	if fmt.Sprint(left) != "[engine-data/ab#keys/k1]" {
		t.Fatalf("after disabling a, engine data left: %q", left)
	}
}
