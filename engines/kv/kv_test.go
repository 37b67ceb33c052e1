package kv_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/enginestest"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/storage"
)

func stack(t *testing.T) (*enginestest.Stack, *kv.Engine) {
	t.Helper()
	s := enginestest.New(t, nil)
	if err := kv.Registrar(s.Store.KV(), s.Barrier)(s.Reg); err != nil {
		t.Fatal(err)
	}
	s.Barrier.RegisterRewrapper(kv.SealKind, kv.Rewrapper(s.Store.KV()))
	return s, s.Mount(t, "secret", kv.Type).(*kv.Engine)
}

func ptr[T any](v T) *T { return &v }

func TestRoundTripBinary(t *testing.T) {
	ctx := context.Background()
	_, e := stack(t)
	blob := make([]byte, 100<<10)
	_, _ = rand.Read(blob)
	if _, err := e.Put(ctx, "apps/a/keystore", map[string][]byte{"p12": blob, "user": []byte("admin")}, nil); err != nil {
		t.Fatal(err)
	}
	got, err := e.Get(ctx, "apps/a/keystore", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Data["p12"], blob) || string(got.Data["user"]) != "admin" || got.Version != 1 {
		t.Fatalf("round trip lost bytes: version %d, %d bytes", got.Version, len(got.Data["p12"]))
	}
}

func TestVersionsAndMaxVersions(t *testing.T) {
	ctx := context.Background()
	_, e := stack(t)
	if err := e.WriteMetadata(ctx, "p", kv.MetadataUpdate{MaxVersions: ptr(5)}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		v, err := e.Put(ctx, "p", map[string][]byte{"n": fmt.Appendf(nil, "%d", i)}, nil)
		if err != nil || v.Version != i {
			t.Fatalf("put %d = %+v, %v", i, v, err)
		}
	}
	m, err := e.ReadMetadata(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Versions) != 5 || m.OldestVersion != 6 || m.CurrentVersion != 10 {
		t.Fatalf("metadata = %+v; want versions 6..10", m)
	}
	if _, err := e.Get(ctx, "p", 5); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("pruned version 5: %v, want ErrNotFound", err)
	}
	got, err := e.Get(ctx, "p", 7)
	if err != nil || string(got.Data["n"]) != "7" {
		t.Fatalf("version 7 = %v, %v", got, err)
	}
}

func TestCASDeleteDestroyRollbackPatch(t *testing.T) {
	ctx := context.Background()
	s, e := stack(t)
	if _, err := e.Put(ctx, "c", map[string][]byte{"a": []byte("1")}, ptr(1)); !errors.Is(err, kv.ErrCASMismatch) {
		t.Fatalf("cas 1 on a new secret: %v", err)
	}
	if _, err := e.Put(ctx, "c", map[string][]byte{"a": []byte("1")}, ptr(0)); err != nil {
		t.Fatalf("cas 0 on a new secret: %v", err)
	}
	if _, err := e.Put(ctx, "c", map[string][]byte{"a": []byte("2")}, ptr(0)); !errors.Is(err, kv.ErrCASMismatch) {
		t.Fatalf("stale cas: %v", err)
	}
	if _, err := e.Patch(ctx, "c", map[string][]byte{"b": []byte("x")}, nil, ptr(1)); err != nil {
		t.Fatal(err)
	}
	got, _ := e.Get(ctx, "c", 0)
	if string(got.Data["a"]) != "1" || string(got.Data["b"]) != "x" || got.Version != 2 {
		t.Fatalf("patched = %+v", got)
	}
	if err := e.WriteMetadata(ctx, "c", kv.MetadataUpdate{CASRequired: ptr(true), Custom: map[string]string{"owner": "team-a"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Put(ctx, "c", map[string][]byte{"a": []byte("3")}, nil); !errors.Is(err, kv.ErrCASRequired) {
		t.Fatalf("put without cas when required: %v", err)
	}
	m, _ := e.ReadMetadata(ctx, "c")
	if m.Custom["owner"] != "team-a" || !m.CASRequired {
		t.Fatalf("metadata = %+v", m)
	}

	// Soft delete and undelete.
	if n, err := e.Delete(ctx, "c", nil); err != nil || n != 1 {
		t.Fatalf("delete latest = %d, %v", n, err)
	}
	if _, err := e.Get(ctx, "c", 0); !errors.Is(err, kv.ErrDeleted) {
		t.Fatalf("read deleted: %v", err)
	}
	if _, err := e.Undelete(ctx, "c", []int{2}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Get(ctx, "c", 2); err != nil {
		t.Fatalf("read undeleted: %v", err)
	}

	// Destroy removes the ciphertext.
	if n, err := e.Destroy(ctx, "c", []int{1}); err != nil || n != 1 {
		t.Fatalf("destroy = %d, %v", n, err)
	}
	v, err := s.Store.KV().GetVersion(ctx, "secret", "c", 1)
	if err != nil || v.Sealed != nil || !v.Destroyed {
		t.Fatalf("destroyed row = %+v, %v", v, err)
	}
	if _, err := e.Get(ctx, "c", 1); !errors.Is(err, kv.ErrDestroyed) {
		t.Fatalf("read destroyed: %v", err)
	}
	if _, err := e.Rollback(ctx, "c", 1, ptr(2)); !errors.Is(err, kv.ErrDestroyed) {
		t.Fatalf("rollback to destroyed: %v", err)
	}
	if err := e.WriteMetadata(ctx, "c", kv.MetadataUpdate{CASRequired: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Put(ctx, "c", map[string][]byte{"a": []byte("3")}, nil); err != nil {
		t.Fatal(err)
	}
	if v, err := e.Rollback(ctx, "c", 2, nil); err != nil || v.Version != 4 {
		t.Fatalf("rollback = %+v, %v", v, err)
	}
	got, _ = e.Get(ctx, "c", 0)
	if string(got.Data["b"]) != "x" {
		t.Fatalf("rolled back = %q", got.Data)
	}
	if err := e.DeleteMetadata(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Get(ctx, "c", 0); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("read after metadata delete: %v", err)
	}
}

// TestSealBinding: a ciphertext moved to another path or version of the
// database does not open.
func TestSealBinding(t *testing.T) {
	ctx := context.Background()
	s, e := stack(t)
	for _, p := range []string{"a", "b"} {
		if _, err := e.Put(ctx, p, map[string][]byte{"v": []byte(p)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Put(ctx, "b", map[string][]byte{"v": []byte("b2")}, nil); err != nil {
		t.Fatal(err)
	}
	st := s.Store.KV()
	a1, _ := st.GetVersion(ctx, "secret", "a", 1)
	b1, _ := st.GetVersion(ctx, "secret", "b", 1)
	b2, _ := st.GetVersion(ctx, "secret", "b", 2)
	if err := st.ReplaceSealed(ctx, "secret", "b", 2, b2.Sealed, b1.Sealed); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Get(ctx, "b", 2); err == nil {
		t.Fatal("version 1's ciphertext opened as version 2")
	}
	if err := st.ReplaceSealed(ctx, "secret", "b", 1, b1.Sealed, a1.Sealed); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Get(ctx, "b", 1); err == nil {
		t.Fatal("path a's ciphertext opened at path b")
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	_, e := stack(t)
	big := make([]byte, kv.DefaultMaxValueBytes+1)
	many := map[string][]byte{}
	for i := range kv.MaxFields + 1 {
		many[fmt.Sprint("f", i)] = []byte("x")
	}
	long := string(bytes.Repeat([]byte("a"), kv.MaxPathLen+1))
	for _, tt := range []struct {
		name string
		path string
		data map[string][]byte
		want error
	}{
		{"dotdot", "a/../b", map[string][]byte{"k": nil}, engines.ErrInvalidPath},
		{"empty segment", "a//b", map[string][]byte{"k": nil}, engines.ErrInvalidPath},
		{"trailing slash", "a/", map[string][]byte{"k": nil}, engines.ErrInvalidPath},
		{"hash", "a#b", map[string][]byte{"k": nil}, engines.ErrInvalidPath},
		{"star", "a/*", map[string][]byte{"k": nil}, engines.ErrInvalidPath},
		{"template", "{{identity}}", map[string][]byte{"k": nil}, engines.ErrInvalidPath},
		{"long path", long, map[string][]byte{"k": nil}, engines.ErrInvalidPath},
		{"no fields", "ok", map[string][]byte{}, engines.ErrInvalidRequest},
		{"empty field name", "ok", map[string][]byte{"": []byte("x")}, engines.ErrInvalidRequest},
		{"too large", "ok", map[string][]byte{"k": big}, kv.ErrTooLarge},
		{"too many fields", "ok", many, kv.ErrTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := e.Put(ctx, tt.path, tt.data, nil); !errors.Is(err, tt.want) {
				t.Fatalf("put = %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := e.Get(ctx, "ok", 0); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("a refused put stored something: %v", err)
	}
	if _, err := e.Destroy(ctx, "ok", nil); !errors.Is(err, engines.ErrInvalidRequest) {
		t.Fatalf("destroy without versions: %v", err)
	}
	if _, err := e.Configure(ctx, map[string]string{"max_value_bytes": "10"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Put(ctx, "ok", map[string][]byte{"k": []byte("0123456789")}, nil); !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("configured limit: %v", err)
	}
	if _, err := e.Configure(ctx, map[string]string{"nope": "1"}); !errors.Is(err, engines.ErrInvalidConfig) {
		t.Fatalf("unknown setting: %v", err)
	}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	_, e := stack(t)
	for _, p := range []string{"apps/a/db", "apps/a/web", "apps/b", "apps/c/x/y", "apps/d", "top"} {
		if _, err := e.Put(ctx, p, map[string][]byte{"k": []byte("v")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, limit := range []int{1, 2, 3, 100} {
		var got []string
		after := ""
		for range 20 {
			keys, next, err := e.List(ctx, "apps/", after, limit)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, keys...)
			if next == "" {
				break
			}
			after = next
		}
		if want := []string{"a/", "b", "c/", "d"}; !slices.Equal(got, want) {
			t.Fatalf("limit %d: list = %q, want %q", limit, got, want)
		}
	}
	keys, _, err := e.List(ctx, "", "", 0)
	if err != nil || !slices.Equal(keys, []string{"apps/", "top"}) {
		t.Fatalf("list root = %q, %v", keys, err)
	}
	if _, _, err := e.List(ctx, "apps", "", 0); !errors.Is(err, engines.ErrInvalidPath) {
		t.Fatalf("prefix without slash: %v", err)
	}
}

// TestConcurrentCAS: 16 writers each add their own field with
// read-then-patch under CAS, retrying on mismatch; no update is lost.
func TestConcurrentCAS(t *testing.T) {
	ctx := context.Background()
	_, e := stack(t)
	if _, err := e.Put(ctx, "counter", map[string][]byte{"init": []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	const writers = 16
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				cur, err := e.Get(ctx, "counter", 0)
				if err != nil {
					errs <- err
					return
				}
				data := cur.Data
				data[fmt.Sprint("w", w)] = []byte("done")
				_, err = e.Put(ctx, "counter", data, ptr(cur.Version))
				if errors.Is(err, kv.ErrCASMismatch) {
					continue
				}
				if err != nil {
					errs <- err
				}
				return
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := e.Get(ctx, "counter", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Data) != writers+1 || got.Version != writers+1 {
		t.Fatalf("after %d CAS writers: version %d with %d fields; an update was lost", writers, got.Version, len(got.Data))
	}
}

func TestRewrapAndDisable(t *testing.T) {
	ctx := context.Background()
	s, e := stack(t)
	if _, err := e.Put(ctx, "r", map[string][]byte{"k": []byte("v")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteMetadata(ctx, "r", kv.MetadataUpdate{Custom: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Barrier.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := s.Barrier.RewrapAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rewrapped < 2 {
		t.Fatalf("rewrap = %+v; want the value and the custom metadata rewrapped", st)
	}
	v, _ := s.Store.KV().GetVersion(ctx, "secret", "r", 1)
	if s.Barrier.NeedsRewrap(v.Sealed) {
		t.Fatal("value still under the old key")
	}
	if got, err := e.Get(ctx, "r", 0); err != nil || string(got.Data["k"]) != "v" {
		t.Fatalf("read after rewrap: %v", err)
	}
	// Disabling the mount deletes its secrets: a new mount at the path
	// starts empty.
	if err := s.Mounts.Disable(ctx, "secret", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Store.KV().GetMeta(ctx, "secret", "r"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("secret survives disable: %v", err)
	}
}

func TestDeleteVersionAfter(t *testing.T) {
	ctx := context.Background()
	_, e := stack(t)
	if _, err := e.Put(ctx, "t", map[string][]byte{"k": []byte("v")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteMetadata(ctx, "t", kv.MetadataUpdate{DeleteVersionAfter: ptr(time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := e.Get(ctx, "t", 0); !errors.Is(err, kv.ErrDeleted) {
		t.Fatalf("expired version: %v", err)
	}
}
