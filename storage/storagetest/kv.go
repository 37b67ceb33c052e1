package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

func testKV(t *testing.T, s storage.Store) {
	t.Run("Versions", func(t *testing.T) { testKVVersions(t, s) })
	t.Run("List", func(t *testing.T) { testKVList(t, s) })
	t.Run("ConcurrentCAS", func(t *testing.T) { testKVConcurrentCAS(t, s) })
	t.Run("EachSealed", func(t *testing.T) { testKVEachSealed(t, s) })
	t.Run("Read", func(t *testing.T) { testKVRead(t, s) })
}

// testKVRead: Read's one query returns what the separate lookups do (the
// mount row, the metadata, the version) and nil for each that is absent,
// including a deleted and a destroyed version as they are stored.
func testKVRead(t *testing.T, s storage.Store) {
	ctx := t.Context()
	kv := s.KV()
	must(t, "mount", s.Mounts().Put(ctx, &storage.Mount{Path: "rm", Type: "kv", SealedConfig: []byte("cfg"), CreatedAt: at(0)}))
	for i := 1; i <= 4; i++ {
		must(t, fmt.Sprint("write v", i), kv.WriteVersion(ctx, kvv("rm", "p", i, fmt.Sprint("value", i)), 0))
	}
	must(t, "write other mount", kv.WriteVersion(ctx, kvv("other", "p", 1, "x"), 0))
	must(t, "metadata", kv.PutMeta(ctx, &storage.KVMeta{Mount: "rm", Path: "p", MaxVersions: 7, CASRequired: true,
		DeleteVersionAfter: time.Minute, SealedCustom: []byte("custom"), UpdatedAt: at(time.Hour)}))
	_, err := kv.SetDeleted(ctx, "rm", "p", []int{2}, at(2*time.Hour))
	must(t, "delete v2", err)
	_, err = kv.Destroy(ctx, "rm", "p", []int{3})
	must(t, "destroy v3", err)
	mt, err := s.Mounts().Get(ctx, "rm")
	must(t, "get mount", err)
	meta, err := kv.GetMeta(ctx, "rm", "p")
	must(t, "get metadata", err)
	version := func(n int) *storage.KVVersion {
		v, err := kv.GetVersion(ctx, "rm", "p", n)
		must(t, fmt.Sprint("get v", n), err)
		return v
	}
	otherMeta, err := kv.GetMeta(ctx, "other", "p")
	must(t, "get other metadata", err)
	otherV1, err := kv.GetVersion(ctx, "other", "p", 1)
	must(t, "get other v1", err)
	for _, tc := range []struct {
		name        string
		mount, path string
		version     int
		want        storage.KVRead
	}{
		{"current", "rm", "p", 0, storage.KVRead{Mount: mt, Meta: meta, Version: version(4)}},
		{"by number", "rm", "p", 1, storage.KVRead{Mount: mt, Meta: meta, Version: version(1)}},
		{"deleted", "rm", "p", 2, storage.KVRead{Mount: mt, Meta: meta, Version: version(2)}},
		{"destroyed", "rm", "p", 3, storage.KVRead{Mount: mt, Meta: meta, Version: version(3)}},
		{"absent version", "rm", "p", 9, storage.KVRead{Mount: mt, Meta: meta}},
		{"absent path", "rm", "q", 0, storage.KVRead{Mount: mt}},
		{"no mount row", "other", "p", 0, storage.KVRead{Meta: otherMeta, Version: otherV1}},
		{"nothing", "none", "p", 1, storage.KVRead{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kv.Read(ctx, tc.mount, tc.path, tc.version)
			must(t, "read", err)
			same(t, "read", *got, tc.want)
		})
	}
}

func kvv(mount, path string, v int, sealed string) *storage.KVVersion {
	return &storage.KVVersion{Mount: mount, Path: path, Version: v, Sealed: []byte(sealed), CreatedAt: at(time.Duration(v) * time.Second)}
}

func testKVVersions(t *testing.T, s storage.Store) {
	ctx := t.Context()
	kv := s.KV()
	_, err := kv.GetMeta(ctx, "m", "a")
	wantErr(t, "get absent metadata", err, storage.ErrNotFound)
	_, err = kv.GetVersion(ctx, "m", "a", 1)
	wantErr(t, "get absent version", err, storage.ErrNotFound)
	wantErr(t, "delete absent", kv.DeleteAll(ctx, "m", "a"), storage.ErrNotFound)

	// Version 2 before 1, and 1 twice, are conflicts: the write is a CAS on
	// the current version.
	wantErr(t, "write v2 first", kv.WriteVersion(ctx, kvv("m", "a", 2, "x"), 0), storage.ErrConflict)
	must(t, "write v1", kv.WriteVersion(ctx, kvv("m", "a", 1, "one"), 0))
	wantErr(t, "write v1 again", kv.WriteVersion(ctx, kvv("m", "a", 1, "uno"), 0), storage.ErrConflict)
	m, err := kv.GetMeta(ctx, "m", "a")
	must(t, "get metadata", err)
	same(t, "current after v1", m.CurrentVersion, 1)
	same(t, "created", m.CreatedAt, norm(at(time.Second)))
	v, err := kv.GetVersion(ctx, "m", "a", 1)
	must(t, "get v1", err)
	same(t, "v1", v, &storage.KVVersion{Mount: "m", Path: "a", Version: 1, Sealed: []byte("one"), CreatedAt: norm(at(time.Second))})
	// The same path in another mount is another secret.
	_, err = kv.GetVersion(ctx, "m2", "a", 1)
	wantErr(t, "other mount", err, storage.ErrNotFound)

	// Metadata settings replace; the current version and creation time stay.
	must(t, "put metadata", kv.PutMeta(ctx, &storage.KVMeta{Mount: "m", Path: "a", MaxVersions: 3, CASRequired: true,
		DeleteVersionAfter: 90 * time.Second, SealedCustom: []byte("sealed-custom"), UpdatedAt: at(time.Hour)}))
	m, err = kv.GetMeta(ctx, "m", "a")
	must(t, "get metadata", err)
	same(t, "metadata", m, &storage.KVMeta{Mount: "m", Path: "a", CurrentVersion: 1, MaxVersions: 3, CASRequired: true,
		DeleteVersionAfter: 90 * time.Second, SealedCustom: []byte("sealed-custom"), CreatedAt: norm(at(time.Second)), UpdatedAt: norm(at(time.Hour))})

	// Keep 3: writing v2..v6 leaves v4..v6.
	for i := 2; i <= 6; i++ {
		must(t, fmt.Sprint("write v", i), kv.WriteVersion(ctx, kvv("m", "a", i, fmt.Sprint("value", i)), 3))
	}
	vs, err := kv.ListVersions(ctx, "m", "a")
	must(t, "list versions", err)
	if len(vs) != 3 || vs[0].Version != 4 || vs[2].Version != 6 {
		t.Fatalf("after pruning to 3: %d versions, first %+v", len(vs), vs[0])
	}

	// Soft delete, undelete, destroy.
	n, err := kv.SetDeleted(ctx, "m", "a", []int{5, 99}, at(2*time.Hour))
	must(t, "delete v5", err)
	same(t, "deleted count", n, 1)
	v, err = kv.GetVersion(ctx, "m", "a", 5)
	must(t, "get v5", err)
	same(t, "deleted_at", v.DeletedAt, norm(at(2*time.Hour)))
	if !bytes.Equal(v.Sealed, []byte("value5")) {
		t.Fatalf("soft delete changed the value: %q", v.Sealed)
	}
	n, err = kv.SetDeleted(ctx, "m", "a", []int{5}, time.Time{})
	must(t, "undelete v5", err)
	same(t, "undeleted count", n, 1)
	v, _ = kv.GetVersion(ctx, "m", "a", 5)
	same(t, "deleted_at after undelete", v.DeletedAt, time.Time{})
	n, err = kv.Destroy(ctx, "m", "a", []int{4, 5})
	must(t, "destroy", err)
	same(t, "destroyed count", n, 2)
	v, _ = kv.GetVersion(ctx, "m", "a", 4)
	if !v.Destroyed || v.Sealed != nil {
		t.Fatalf("destroyed version keeps %q (destroyed %v)", v.Sealed, v.Destroyed)
	}
	n, err = kv.Destroy(ctx, "m", "a", []int{4})
	must(t, "destroy again", err)
	same(t, "destroy again count", n, 0)
	n, err = kv.SetDeleted(ctx, "m", "a", []int{4}, at(0))
	must(t, "delete destroyed", err)
	same(t, "delete destroyed count", n, 0)
	// A destroyed version is not rewrapped, nor can it be refilled.
	wantErr(t, "replace destroyed", kv.ReplaceSealed(ctx, "m", "a", 4, nil, []byte("x")), storage.ErrConflict)
	must(t, "replace v6", kv.ReplaceSealed(ctx, "m", "a", 6, []byte("value6"), []byte("value6'")))
	wantErr(t, "replace stale", kv.ReplaceSealed(ctx, "m", "a", 6, []byte("value6"), []byte("x")), storage.ErrConflict)
	wantErr(t, "replace absent", kv.ReplaceSealed(ctx, "m", "a", 1, []byte("one"), []byte("x")), storage.ErrNotFound)
	must(t, "replace custom", kv.ReplaceCustom(ctx, "m", "a", []byte("sealed-custom"), []byte("c2")))
	wantErr(t, "replace custom stale", kv.ReplaceCustom(ctx, "m", "a", []byte("sealed-custom"), []byte("c3")), storage.ErrConflict)

	// Metadata can exist before any version: the first write is then v1.
	must(t, "put metadata first", kv.PutMeta(ctx, &storage.KVMeta{Mount: "m", Path: "b", MaxVersions: 2}))
	must(t, "write b v1", kv.WriteVersion(ctx, kvv("m", "b", 1, "b1"), 2))

	must(t, "delete all", kv.DeleteAll(ctx, "m", "a"))
	_, err = kv.GetMeta(ctx, "m", "a")
	wantErr(t, "metadata after delete", err, storage.ErrNotFound)
	vs, err = kv.ListVersions(ctx, "m", "a")
	must(t, "versions after delete", err)
	same(t, "versions after delete", len(vs), 0)
	must(t, "rewrite after delete", kv.WriteVersion(ctx, kvv("m", "a", 1, "again"), 0))
	must(t, "delete mount", kv.DeleteMount(ctx, "m"))
	_, err = kv.GetMeta(ctx, "m", "b")
	wantErr(t, "metadata after delete mount", err, storage.ErrNotFound)
}

func testKVList(t *testing.T, s storage.Store) {
	ctx := t.Context()
	kv := s.KV()
	paths := []string{"apps/a/db", "apps/a/web", "apps/b", "apps%", "apps_x", "other", "Apps/z"}
	for _, p := range paths {
		must(t, "write "+p, kv.WriteVersion(ctx, kvv("l", p, 1, "v"), 0))
	}
	must(t, "write other mount", kv.WriteVersion(ctx, kvv("l2", "apps/c", 1, "v"), 0))
	var got []string
	after := ""
	for range 10 {
		page, next, err := kv.List(ctx, storage.KVFilter{Mount: "l", Prefix: "apps/", After: after, Limit: 2})
		must(t, "list", err)
		got = append(got, page...)
		if next == "" {
			break
		}
		after = next
	}
	// Byte order, prefix taken literally (no LIKE wildcards), one mount.
	same(t, "list apps/", got, []string{"apps/a/db", "apps/a/web", "apps/b"})
	all, next, err := kv.List(ctx, storage.KVFilter{Mount: "l"})
	must(t, "list all", err)
	same(t, "list all", all, []string{"Apps/z", "apps%", "apps/a/db", "apps/a/web", "apps/b", "apps_x", "other"})
	same(t, "next at end", next, "")
}

// testKVConcurrentCAS: writers that each read the current version and
// write the next one, retrying on conflict, lose no update.
func testKVConcurrentCAS(t *testing.T, s storage.Store) {
	ctx := t.Context()
	kv := s.KV()
	const writers, each = 8, 5
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; {
				cur := 0
				m, err := kv.GetMeta(ctx, "c", "p")
				if err == nil {
					cur = m.CurrentVersion
				} else if !errors.Is(err, storage.ErrNotFound) {
					errs <- err
					return
				}
				err = kv.WriteVersion(ctx, kvv("c", "p", cur+1, fmt.Sprintf("w%d-%d", w, i)), 0)
				if errors.Is(err, storage.ErrConflict) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				i++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	vs, err := kv.ListVersions(ctx, "c", "p")
	must(t, "list", err)
	same(t, "versions", len(vs), writers*each)
	seen := map[string]bool{}
	for i, v := range vs {
		same(t, "version number", v.Version, i+1)
		if seen[string(v.Sealed)] {
			t.Fatalf("value %q written twice", v.Sealed)
		}
		seen[string(v.Sealed)] = true
	}
}

func testKVEachSealed(t *testing.T, s storage.Store) {
	ctx := t.Context()
	kv := s.KV()
	want := map[string]bool{}
	for i := range 450 { // more than two pages
		p := fmt.Sprintf("p%03d", i)
		must(t, "write", kv.WriteVersion(ctx, kvv("e", p, 1, "s"+p), 0))
		want[fmt.Sprintf("e#%s#1", p)] = true
	}
	must(t, "write v2", kv.WriteVersion(ctx, kvv("e", "p000", 2, "v2"), 0))
	want["e#p000#2"] = true
	_, err := kv.Destroy(ctx, "e", "p001", []int{1})
	must(t, "destroy", err)
	delete(want, "e#p001#1")
	must(t, "custom", kv.PutMeta(ctx, &storage.KVMeta{Mount: "e", Path: "p002", SealedCustom: []byte("c")}))
	want["e#p002#0"] = true
	got := map[string]bool{}
	must(t, "each", kv.EachSealed(ctx, func(mount, path string, version int, sealed []byte) error {
		if mount != "e" {
			return nil // the other subtests' values
		}
		k := fmt.Sprintf("%s#%s#%d", mount, path, version)
		if got[k] {
			return fmt.Errorf("visited %s twice", k)
		}
		if len(sealed) == 0 {
			return fmt.Errorf("%s: empty ciphertext", k)
		}
		got[k] = true
		return nil
	}))
	if len(got) != len(want) {
		t.Fatalf("visited %d values, want %d", len(got), len(want))
	}
	same(t, "visited", got, want)
}
