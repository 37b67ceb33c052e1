package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

func testIssuers(t *testing.T, s storage.Store) {
	ctx := t.Context()
	is := s.Issuers()
	root := &storage.Issuer{ID: "root-ski", Kind: "root", KeyName: "k-root", DER: []byte{0x30, 1},
		Active: false, CRLNumber: 41, CreatedAt: at(0)}
	inter := &storage.Issuer{ID: "int-ski", Kind: "intermediate", KeyName: "k-int", DER: []byte{0x30, 2},
		ChainDER: [][]byte{{0x30, 2}, {0x30, 1}}, Active: true, CreatedAt: at(time.Hour)}
	// Put the later one first: List orders by CreatedAt, not insertion.
	for _, x := range []*storage.Issuer{inter, root} {
		in := *x
		must(t, "put "+x.ID, is.Put(ctx, &in))
	}
	t.Run("RoundTrip", func(t *testing.T) {
		for _, want := range []*storage.Issuer{root, inter} {
			got, err := is.Get(ctx, want.ID)
			must(t, "get", err)
			w := *want
			w.CreatedAt = norm(w.CreatedAt)
			same(t, "issuer", got, &w)
		}
	})
	t.Run("List", func(t *testing.T) {
		got, err := is.List(ctx)
		must(t, "list", err)
		if g := ids(got, func(x *storage.Issuer) string { return x.ID }); !slices.Equal(g, []string{"root-ski", "int-ski"}) {
			t.Fatalf("order %v", g)
		}
	})
	t.Run("Errors", func(t *testing.T) {
		wantErr(t, "duplicate", is.Put(ctx, &storage.Issuer{ID: "root-ski", Kind: "root"}), storage.ErrConflict)
		_, err := is.Get(ctx, "nope")
		wantErr(t, "get", err, storage.ErrNotFound)
		wantErr(t, "set active", is.SetActive(ctx, "nope", true), storage.ErrNotFound)
		_, err = is.NextCRLNumber(ctx, "nope")
		wantErr(t, "next crl", err, storage.ErrNotFound)
	})
	t.Run("SetActive", func(t *testing.T) {
		for _, active := range []bool{true, false, true} {
			must(t, "set", is.SetActive(ctx, "root-ski", active))
			got, err := is.Get(ctx, "root-ski")
			must(t, "get", err)
			if got.Active != active {
				t.Fatalf("active %v, want %v", got.Active, active)
			}
		}
	})
	t.Run("NextCRLNumber", func(t *testing.T) {
		n, err := is.NextCRLNumber(ctx, "root-ski")
		must(t, "next", err)
		if n != 42 {
			t.Fatalf("got %d, want 42", n)
		}
		// Concurrent callers get distinct, gapless numbers.
		const workers, each = 4, 10
		var mu sync.Mutex
		seen := map[int64]bool{}
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for range workers {
			wg.Go(func() {
				for range each {
					n, err := is.NextCRLNumber(ctx, "root-ski")
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					seen[n] = true
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("next: %v", err)
		}
		for i := int64(43); i < 43+workers*each; i++ {
			if !seen[i] {
				t.Fatalf("number %d not handed out (got %d distinct)", i, len(seen))
			}
		}
	})
}

func testKeyBlobs(t *testing.T, s storage.Store) {
	ctx := t.Context()
	kb := s.KeyBlobs()
	want := []*storage.KeyBlob{
		{Name: "b-key", Type: "ecdsa-p256", PublicDER: []byte{1, 2}, Sealed: []byte{3, 4, 5}, CreatedAt: at(0)},
		{Name: "a-key", Type: "ed25519", PublicDER: []byte{6}, Sealed: []byte{7}, CreatedAt: at(time.Second)},
	}
	for _, k := range want {
		in := *k
		must(t, "put", kb.Put(ctx, &in))
		k.CreatedAt = norm(k.CreatedAt)
	}
	got, err := kb.Get(ctx, "b-key")
	must(t, "get", err)
	same(t, "key blob", got, want[0])
	list, err := kb.List(ctx)
	must(t, "list", err)
	same(t, "list (by name)", list, []*storage.KeyBlob{want[1], want[0]})
	wantErr(t, "duplicate", kb.Put(ctx, &storage.KeyBlob{Name: "a-key", Type: "x"}), storage.ErrConflict)
	_, err = kb.Get(ctx, "nope")
	wantErr(t, "get missing", err, storage.ErrNotFound)

	must(t, "replace sealed", kb.ReplaceSealed(ctx, "a-key", []byte{7}, []byte{8, 9}))
	got, err = kb.Get(ctx, "a-key")
	must(t, "get replaced", err)
	if string(got.Sealed) != string([]byte{8, 9}) {
		t.Fatalf("sealed after replace = %v", got.Sealed)
	}
	wantErr(t, "replace stale", kb.ReplaceSealed(ctx, "a-key", []byte{7}, []byte{1}), storage.ErrConflict)
	wantErr(t, "replace missing", kb.ReplaceSealed(ctx, "nope", []byte{7}, []byte{1}), storage.ErrNotFound)

	must(t, "delete", kb.Delete(ctx, "b-key"))
	_, err = kb.Get(ctx, "b-key")
	wantErr(t, "get deleted", err, storage.ErrNotFound)
	wantErr(t, "delete again", kb.Delete(ctx, "b-key"), storage.ErrNotFound)
	list, err = kb.List(ctx)
	must(t, "list after delete", err)
	if len(list) != 1 || list[0].Name != "a-key" {
		t.Fatalf("list after delete = %d keys, want only a-key", len(list))
	}
}

func testKeyring(t *testing.T, s storage.Store) {
	ctx := t.Context()
	kr := s.Keyring()
	_, _, err := kr.Get(ctx)
	wantErr(t, "get empty", err, storage.ErrNotFound)
	_, err = kr.Put(ctx, []byte("v1"), 3)
	wantErr(t, "update of none", err, storage.ErrConflict)

	steps := []struct {
		name    string
		sealed  string
		prev    int64
		wantV   int64
		wantErr error
	}{
		{"create", "v1", 0, 1, nil},
		{"create again", "x", 0, 0, storage.ErrConflict},
		{"update", "v2", 1, 2, nil},
		{"stale", "x", 1, 0, storage.ErrConflict},
		{"future", "x", 9, 0, storage.ErrConflict},
		{"update again", "v3", 2, 3, nil},
	}
	for _, st := range steps {
		v, err := kr.Put(ctx, []byte(st.sealed), st.prev)
		if st.wantErr != nil {
			wantErr(t, st.name, err, st.wantErr)
			continue
		}
		must(t, st.name, err)
		if v != st.wantV {
			t.Fatalf("%s: version %d, want %d", st.name, v, st.wantV)
		}
	}
	sealed, v, err := kr.Get(ctx)
	must(t, "get", err)
	if string(sealed) != "v3" || v != 3 {
		t.Fatalf("got %q v%d", sealed, v)
	}

	// Racing writers from one version: exactly one wins.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			_, err := kr.Put(ctx, fmt.Appendf(nil, "w%d", i), 3)
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, storage.ErrConflict):
				t.Errorf("racing put: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d racing writers won, want 1", wins.Load())
	}
	if _, v, _ := kr.Get(ctx); v != 4 {
		t.Fatalf("version %d after race, want 4", v)
	}
}

func testTokens(t *testing.T, s storage.Store) {
	ctx := t.Context()
	ts := s.Tokens()
	full := storage.Token{ID: "t-full", Hash: []byte("hash-full"), Policies: []string{"admin", "pki"},
		Meta: map[string]string{"user": "alice", "k": ""}, ExpiresAt: at(time.Hour), UsesLeft: 3, CreatedAt: at(0)}
	bare := storage.Token{ID: "t-bare", Hash: []byte("hash-bare"), CreatedAt: at(time.Second)}
	for _, tok := range []storage.Token{full, bare} {
		in := tok
		must(t, "put", ts.Put(ctx, &in))
	}
	norms := func(x storage.Token) *storage.Token {
		x.ExpiresAt, x.CreatedAt = norm(x.ExpiresAt), norm(x.CreatedAt)
		return &x
	}

	t.Run("RoundTrip", func(t *testing.T) {
		for _, want := range []storage.Token{full, bare} {
			got, err := ts.Get(ctx, want.ID)
			must(t, "get", err)
			same(t, "token", got, norms(want))
			got, err = ts.GetByHash(ctx, want.Hash)
			must(t, "get by hash", err)
			same(t, "token by hash", got, norms(want))
		}
	})
	t.Run("Errors", func(t *testing.T) {
		wantErr(t, "duplicate id", ts.Put(ctx, &storage.Token{ID: "t-full", Hash: []byte("other")}), storage.ErrConflict)
		wantErr(t, "duplicate hash", ts.Put(ctx, &storage.Token{ID: "t-other", Hash: []byte("hash-full")}), storage.ErrConflict)
		_, err := ts.Get(ctx, "nope")
		wantErr(t, "get", err, storage.ErrNotFound)
		_, err = ts.GetByHash(ctx, []byte("nope"))
		wantErr(t, "get by hash", err, storage.ErrNotFound)
		wantErr(t, "delete", ts.Delete(ctx, "nope"), storage.ErrNotFound)
		wantErr(t, "use", ts.Use(ctx, "nope"), storage.ErrNotFound)
	})
	t.Run("Extend", func(t *testing.T) {
		later := at(2 * time.Hour)
		must(t, "extend", ts.Extend(ctx, "t-full", later))
		got, err := ts.Get(ctx, "t-full")
		must(t, "get", err)
		if !got.ExpiresAt.Equal(norm(later)) {
			t.Fatalf("expiry %s after extend, want %s", got.ExpiresAt, norm(later))
		}
		// A token without an expiry is never given one by a renewal, and
		// a missing token is not found.
		wantErr(t, "extend immortal", ts.Extend(ctx, "t-bare", later), storage.ErrNotFound)
		wantErr(t, "extend missing", ts.Extend(ctx, "nope", later), storage.ErrNotFound)
		if got, err := ts.Get(ctx, "t-bare"); err != nil || !got.ExpiresAt.IsZero() {
			t.Fatalf("immortal token after refused extend: %+v, %v", got, err)
		}
	})
	t.Run("Use", func(t *testing.T) {
		for want := 2; want >= 1; want-- {
			must(t, "use", ts.Use(ctx, "t-full"))
			got, err := ts.Get(ctx, "t-full")
			must(t, "get", err)
			if got.UsesLeft != want {
				t.Fatalf("uses left %d, want %d", got.UsesLeft, want)
			}
		}
		must(t, "last use", ts.Use(ctx, "t-full"))
		wantErr(t, "use exhausted", ts.Use(ctx, "t-full"), storage.ErrNotFound)
		_, err := ts.Get(ctx, "t-full")
		wantErr(t, "get exhausted", err, storage.ErrNotFound)
		_, err = ts.GetByHash(ctx, full.Hash)
		wantErr(t, "get exhausted by hash", err, storage.ErrNotFound)
		// Unlimited tokens stay unlimited.
		for range 3 {
			must(t, "use unlimited", ts.Use(ctx, "t-bare"))
		}
		got, err := ts.Get(ctx, "t-bare")
		must(t, "get", err)
		if got.UsesLeft != 0 {
			t.Fatalf("unlimited token has %d uses left", got.UsesLeft)
		}
	})
	t.Run("ConcurrentUse", func(t *testing.T) {
		must(t, "put", ts.Put(ctx, &storage.Token{ID: "t-5", Hash: []byte("hash-5"), UsesLeft: 5}))
		var ok atomic.Int32
		var wg sync.WaitGroup
		for range 12 {
			wg.Go(func() {
				err := ts.Use(ctx, "t-5")
				switch {
				case err == nil:
					ok.Add(1)
				case !errors.Is(err, storage.ErrNotFound):
					t.Errorf("use: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 5 {
			t.Fatalf("%d uses succeeded, want 5", ok.Load())
		}
	})
	t.Run("Delete", func(t *testing.T) {
		must(t, "delete", ts.Delete(ctx, "t-bare"))
		_, err := ts.Get(ctx, "t-bare")
		wantErr(t, "get deleted", err, storage.ErrNotFound)
	})
}

func testMounts(t *testing.T, s storage.Store) {
	ctx := t.Context()
	ms := s.Mounts()
	must(t, "put", ms.Put(ctx, &storage.Mount{Path: "pki/", Type: "pki", SealedConfig: []byte{1}, CreatedAt: at(0)}))
	must(t, "put", ms.Put(ctx, &storage.Mount{Path: "db/", Type: "database", SealedConfig: []byte{2}, CreatedAt: at(time.Hour)}))
	// Replacing keeps the creation time and swaps type and config.
	must(t, "replace", ms.Put(ctx, &storage.Mount{Path: "pki/", Type: "pki2", SealedConfig: []byte{9, 9}, CreatedAt: at(time.Minute)}))
	got, err := ms.Get(ctx, "pki/")
	must(t, "get", err)
	same(t, "replaced mount", got, &storage.Mount{Path: "pki/", Type: "pki2", SealedConfig: []byte{9, 9}, CreatedAt: norm(at(0))})
	list, err := ms.List(ctx)
	must(t, "list", err)
	if g := ids(list, func(m *storage.Mount) string { return m.Path }); !slices.Equal(g, []string{"db/", "pki/"}) {
		t.Fatalf("list %v", g)
	}
	must(t, "replace sealed", ms.ReplaceSealed(ctx, "pki/", []byte{9, 9}, []byte{7}))
	wantErr(t, "replace stale", ms.ReplaceSealed(ctx, "pki/", []byte{9, 9}, []byte{1}), storage.ErrConflict)
	wantErr(t, "replace missing", ms.ReplaceSealed(ctx, "nope/", []byte{1}, []byte{2}), storage.ErrNotFound)
	if got, _ := ms.Get(ctx, "pki/"); !slices.Equal(got.SealedConfig, []byte{7}) {
		t.Fatalf("sealed config after replace = %v", got.SealedConfig)
	}
	must(t, "delete", ms.Delete(ctx, "db/"))
	wantErr(t, "delete again", ms.Delete(ctx, "db/"), storage.ErrNotFound)
	_, err = ms.Get(ctx, "db/")
	wantErr(t, "get deleted", err, storage.ErrNotFound)
	testMountHold(t, s)
}

// testMountHold: a transaction that holds a mount and stores a lease under
// it, and one that deletes the mount and then counts its leases, never
// both succeed unseen: the deleter waits for the holder and counts its
// lease, or deleted first and the holder finds no mount.
func testMountHold(t *testing.T, s storage.Store) {
	ctx := t.Context()
	ms := s.Mounts()
	wantErr(t, "hold missing", ms.Hold(ctx, "nope/"), storage.ErrNotFound)
	must(t, "put", ms.Put(ctx, &storage.Mount{Path: "hold/", Type: "database", SealedConfig: []byte{1}, CreatedAt: at(0)}))
	deleteAndCount := func() (int, error) {
		n := -1
		err := s.InTx(ctx, func(tx storage.Repos) error {
			if err := tx.Mounts().Delete(ctx, "hold/"); err != nil {
				return err
			}
			var err error
			n, err = tx.Leases().CountActive(ctx, "hold/")
			if err != nil {
				return err
			}
			if n > 0 {
				return errors.New("leases left: rolled back")
			}
			return nil
		})
		return n, err
	}

	// The holder first: the deleter waits for it, then sees its lease.
	held, release := make(chan struct{}), make(chan struct{})
	holder := make(chan error, 1)
	go func() {
		holder <- s.InTx(ctx, func(tx storage.Repos) error {
			if err := tx.Mounts().Hold(ctx, "hold/"); err != nil {
				return err
			}
			close(held)
			<-release
			return tx.Leases().Put(ctx, lease("hold/r/1", at(time.Hour)))
		})
	}()
	<-held
	type counted struct {
		n   int
		err error
	}
	deleter := make(chan counted, 1)
	go func() {
		n, err := deleteAndCount()
		deleter <- counted{n, err}
	}()
	select {
	case c := <-deleter:
		t.Fatalf("the mount was deleted while held (leases counted %d, err %v)", c.n, c.err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	must(t, "holder", <-holder)
	if c := <-deleter; c.n != 1 || c.err == nil {
		t.Fatalf("deleter after the holder: counted %d, err %v; want 1 lease and a rollback", c.n, c.err)
	}
	if _, err := ms.Get(ctx, "hold/"); err != nil {
		t.Fatalf("the mount is gone although the deleter rolled back: %v", err)
	}

	// The deleter first: the holder finds no mount.
	must(t, "set state", s.Leases().SetState(ctx, "hold/r/1", storage.LeaseRevoked, 0, time.Time{}, ""))
	if n, err := deleteAndCount(); err != nil || n != 0 {
		t.Fatalf("delete with no open lease: counted %d, %v", n, err)
	}
	err := s.InTx(ctx, func(tx storage.Repos) error {
		if err := tx.Mounts().Hold(ctx, "hold/"); err != nil {
			return err
		}
		return tx.Leases().Put(ctx, lease("hold/r/2", at(time.Hour)))
	})
	wantErr(t, "hold after delete", err, storage.ErrNotFound)
	if _, err := s.Leases().Get(ctx, "hold/r/2"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a lease was stored under the deleted mount: %v", err)
	}
}

func testSettings(t *testing.T, s storage.Store) {
	ctx := t.Context()
	st := s.Settings()
	_, err := st.Get(ctx, "k")
	wantErr(t, "get missing", err, storage.ErrNotFound)
	must(t, "put if absent", st.PutIfAbsent(ctx, "k", []byte("one")))
	wantErr(t, "put if absent again", st.PutIfAbsent(ctx, "k", []byte("two")), storage.ErrConflict)
	v, err := st.Get(ctx, "k")
	must(t, "get", err)
	if !bytes.Equal(v, []byte("one")) {
		t.Fatalf("got %q", v)
	}
	must(t, "replace", st.Replace(ctx, "k", []byte("one"), []byte("three")))
	wantErr(t, "replace stale", st.Replace(ctx, "k", []byte("one"), []byte("x")), storage.ErrConflict)
	wantErr(t, "replace missing", st.Replace(ctx, "nope", []byte("one"), []byte("x")), storage.ErrNotFound)
	must(t, "put", st.Put(ctx, "k", []byte("three")))
	must(t, "put new", st.Put(ctx, "k2", []byte("four")))
	for k, want := range map[string]string{"k": "three", "k2": "four"} {
		v, err := st.Get(ctx, k)
		must(t, "get", err)
		if string(v) != want {
			t.Fatalf("%s = %q, want %q", k, v, want)
		}
	}
	// List matches a literal prefix: % and _ are not wildcards.
	for _, k := range []string{"eng/a%/x", "eng/a%/y", "eng/ab/z", "eng/a_/w"} {
		must(t, "put "+k, st.Put(ctx, k, []byte("v")))
	}
	keys, err := st.List(ctx, "eng/a%/")
	must(t, "list", err)
	if fmt.Sprint(keys) != "[eng/a%/x eng/a%/y]" {
		t.Fatalf("list eng/a%%/ = %v", keys)
	}
	if keys, err = st.List(ctx, "nothing/"); err != nil || len(keys) != 0 {
		t.Fatalf("list of no keys = %v, %v", keys, err)
	}
	must(t, "delete", st.Delete(ctx, "eng/a%/x"))
	wantErr(t, "delete again", st.Delete(ctx, "eng/a%/x"), storage.ErrNotFound)
	_, err = st.Get(ctx, "eng/a%/x")
	wantErr(t, "get deleted", err, storage.ErrNotFound)
	// A conflict inside a transaction leaves it usable (PostgreSQL aborts a
	// transaction on a failed statement unless the store avoids failing).
	must(t, "tx", s.InTx(ctx, func(tx storage.Repos) error {
		if err := tx.Settings().PutIfAbsent(ctx, "k", []byte("x")); !errors.Is(err, storage.ErrConflict) {
			return fmt.Errorf("want conflict, got %w", err)
		}
		return tx.Settings().Put(ctx, "after-conflict", []byte("ok"))
	}))
	v, err = st.Get(ctx, "after-conflict")
	must(t, "get after conflict", err)
	if string(v) != "ok" {
		t.Fatalf("got %q", v)
	}
}
