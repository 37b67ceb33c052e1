package barrier

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// memStore is an in-memory KeyringStore with the optimistic-concurrency
// semantics of storage.Keyring.
type memStore struct {
	mu      sync.Mutex
	sealed  []byte
	version int64
	loadErr error
	saves   int
}

func (m *memStore) Load(context.Context) ([]byte, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loadErr != nil {
		return nil, 0, m.loadErr
	}
	if m.version == 0 {
		return nil, 0, fmt.Errorf("memstore: %w", ErrNotFound)
	}
	return append([]byte(nil), m.sealed...), m.version, nil
}

func (m *memStore) Save(_ context.Context, sealed []byte, prev int64) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if prev != m.version {
		return 0, fmt.Errorf("memstore: stored %d, caller had %d: %w", m.version, prev, ErrConflict)
	}
	m.sealed = append([]byte(nil), sealed...)
	m.version++
	m.saves++
	return m.version, nil
}

func masterKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, MasterKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func unsealed(t testing.TB) (*Barrier, *memStore, []byte) {
	t.Helper()
	st := &memStore{}
	mk := masterKey(t)
	b := New(st)
	if err := b.Unseal(context.Background(), mk); err != nil {
		t.Fatalf("Unseal: %v", err)
	}
	return b, st, mk
}

func TestSealOpenRoundTrip(t *testing.T) {
	ctx := context.Background()
	b, _, _ := unsealed(t)
	big := make([]byte, 1<<16)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		kind, id string
		pt       []byte
	}{
		{"empty", "k", "i", nil},
		{"one byte", "k", "i", []byte{0}},
		{"text", "hsm.key", "root-ca", []byte("private key bytes")},
		{"64KiB", "mount", "database/", big},
		{"empty kind and id", "", "", []byte("x")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct, err := b.Seal(ctx, tc.kind, tc.id, tc.pt)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if len(ct) != len(tc.pt)+Overhead {
				t.Errorf("len(ct) = %d, want %d", len(ct), len(tc.pt)+Overhead)
			}
			if len(tc.pt) > 8 && bytes.Contains(ct, tc.pt[:8]) {
				t.Error("ciphertext contains plaintext")
			}
			got, err := b.Open(ctx, tc.kind, tc.id, ct)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tc.pt) {
				t.Error("Open returned different bytes")
			}
			again, _ := b.Seal(ctx, tc.kind, tc.id, tc.pt)
			if bytes.Equal(ct, again) {
				t.Error("two seals of the same value are identical: nonce not random")
			}
		})
	}
}

func TestIntegrity(t *testing.T) {
	ctx := context.Background()
	b, _, _ := unsealed(t)
	ct, err := b.Seal(ctx, "hsm.key", "root-ca", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		c := append([]byte(nil), ct...)
		c[i] ^= 0x01
		return c
	}
	boundary, err := b.Seal(ctx, "a", "bc", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		kind, id string
		ct       []byte
	}{
		{"copied to another record", "hsm.key", "issuing-ca", ct},
		{"copied to another kind", "mount", "root-ca", ct},
		{"kind/id boundary moved", "ab", "c", boundary},
		{"format byte", "hsm.key", "root-ca", flip(0)},
		{"key version", "hsm.key", "root-ca", flip(4)},
		{"nonce", "hsm.key", "root-ca", flip(8)},
		{"ciphertext", "hsm.key", "root-ca", flip(headerLen)},
		{"tag", "hsm.key", "root-ca", flip(len(ct) - 1)},
		{"truncated", "hsm.key", "root-ca", ct[:len(ct)-1]},
		{"header only", "hsm.key", "root-ca", ct[:headerLen]},
		{"empty", "hsm.key", "root-ca", nil},
		{"appended byte", "hsm.key", "root-ca", append(append([]byte(nil), ct...), 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pt, err := b.Open(ctx, tc.kind, tc.id, tc.ct)
			if !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Open = %q, %v; want ErrIntegrity", pt, err)
			}
			if pt != nil {
				t.Error("Open returned bytes along with an error")
			}
		})
	}
}

func TestWrongMasterKey(t *testing.T) {
	ctx := context.Background()
	b, st, mk := unsealed(t)
	ct, err := b.Seal(ctx, "k", "i", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	b.Lock()

	other := masterKey(t)
	flipped := append([]byte(nil), mk...)
	flipped[31] ^= 0x80
	tests := []struct {
		name string
		key  []byte
		want error
	}{
		{"other key", other, ErrBadMasterKey},
		{"one bit off", flipped, ErrBadMasterKey},
		{"short", mk[:16], ErrBadMasterKey},
		{"empty", nil, ErrBadMasterKey},
		{"right key", mk, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b2 := New(st)
			err := b2.Unseal(ctx, tc.key)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Unseal = %v, want %v", err, tc.want)
			}
			if tc.want != nil {
				if !b2.Sealed() {
					t.Error("barrier unsealed after a failed Unseal")
				}
				return
			}
			if got, err := b2.Open(ctx, "k", "i", ct); err != nil || string(got) != "v" {
				t.Fatalf("Open after restart = %q, %v", got, err)
			}
			// Unsealing twice: same key is a no-op, another key is refused.
			if err := b2.Unseal(ctx, mk); err != nil {
				t.Errorf("second Unseal with the same key: %v", err)
			}
			if err := b2.Unseal(ctx, other); !errors.Is(err, ErrBadMasterKey) {
				t.Errorf("second Unseal with another key = %v, want ErrBadMasterKey", err)
			}
		})
	}
}

func TestSealedState(t *testing.T) {
	ctx := context.Background()
	b := New(&memStore{})
	if !b.Sealed() {
		t.Fatal("new barrier is not sealed")
	}
	check := func(t *testing.T, b *Barrier, ct []byte) {
		t.Helper()
		if _, err := b.Seal(ctx, "k", "i", []byte("v")); !errors.Is(err, ErrSealed) {
			t.Errorf("Seal = %v, want ErrSealed", err)
		}
		if _, err := b.Open(ctx, "k", "i", ct); !errors.Is(err, ErrSealed) {
			t.Errorf("Open = %v, want ErrSealed", err)
		}
		if _, err := b.Rotate(ctx); !errors.Is(err, ErrSealed) {
			t.Errorf("Rotate = %v, want ErrSealed", err)
		}
		if _, err := b.Rewrap(ctx, "k", "i", ct); !errors.Is(err, ErrSealed) {
			t.Errorf("Rewrap = %v, want ErrSealed", err)
		}
		if b.NeedsRewrap(ct) {
			t.Error("NeedsRewrap true while sealed")
		}
		if b.KeyVersion() != 0 {
			t.Error("KeyVersion non-zero while sealed")
		}
	}
	fake := make([]byte, Overhead+1)
	fake[0], fake[4] = formatV1, 1
	t.Run("never unsealed", func(t *testing.T) { check(t, b, fake) })

	b, _, _ = unsealed(t)
	ct, err := b.Seal(ctx, "k", "i", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	master, keys := b.master, b.ring.keys
	b.Lock()
	t.Run("after Lock", func(t *testing.T) {
		if !b.Sealed() {
			t.Fatal("Sealed() false after Lock")
		}
		check(t, b, ct)
		if !bytes.Equal(master, make([]byte, MasterKeySize)) {
			t.Error("master key not zeroised by Lock")
		}
		for _, k := range keys {
			if !bytes.Equal(k.key, make([]byte, keySize)) {
				t.Errorf("data key v%d not zeroised by Lock", k.version)
			}
		}
	})
}

func TestRotation(t *testing.T) {
	ctx := context.Background()
	b, st, mk := unsealed(t)
	if v := b.KeyVersion(); v != 1 {
		t.Fatalf("first key version = %d, want 1", v)
	}
	ct1, err := b.Seal(ctx, "k", "one", []byte("sealed under v1"))
	if err != nil {
		t.Fatal(err)
	}
	if b.NeedsRewrap(ct1) {
		t.Error("fresh value needs rewrap")
	}
	v, err := b.Rotate(ctx)
	if err != nil || v != 2 {
		t.Fatalf("Rotate = %d, %v; want 2", v, err)
	}
	ct2, err := b.Seal(ctx, "k", "two", []byte("sealed under v2"))
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint32(ct2[1:5]); got != 2 {
		t.Errorf("new seal uses key version %d, want 2", got)
	}
	if !b.NeedsRewrap(ct1) || b.NeedsRewrap(ct2) {
		t.Errorf("NeedsRewrap(v1, v2) = %v, %v; want true, false", b.NeedsRewrap(ct1), b.NeedsRewrap(ct2))
	}
	re, err := b.Rewrap(ctx, "k", "one", ct1)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if b.NeedsRewrap(re) {
		t.Error("rewrapped value still needs rewrap")
	}
	if _, err := b.Rewrap(ctx, "k", "other", ct1); !errors.Is(err, ErrIntegrity) {
		t.Errorf("Rewrap for the wrong record = %v, want ErrIntegrity", err)
	}
	if _, err := b.Rotate(ctx); err != nil {
		t.Fatal(err)
	}

	// Restart: a new barrier on the same store opens every version.
	b2 := New(st)
	if err := b2.Unseal(ctx, mk); err != nil {
		t.Fatal(err)
	}
	if v := b2.KeyVersion(); v != 3 {
		t.Errorf("key version after restart = %d, want 3", v)
	}
	for _, c := range []struct {
		id string
		ct []byte
	}{{"one", ct1}, {"two", ct2}, {"one", re}} {
		if _, err := b2.Open(ctx, "k", c.id, c.ct); err != nil {
			t.Errorf("Open %s after restart: %v", c.id, err)
		}
	}
}

// TestPeerRotation: two nodes share one store; a value sealed by a node that
// rotated opens on the other (it reloads the keyring), and concurrent
// rotations on both nodes lose no key version.
func TestPeerRotation(t *testing.T) {
	ctx := context.Background()
	a, st, mk := unsealed(t)
	b := New(st)
	if err := b.Unseal(ctx, mk); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	ct, err := a.Seal(ctx, "k", "i", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.Open(ctx, "k", "i", ct); err != nil || string(got) != "v" {
		t.Fatalf("peer Open after rotation = %q, %v", got, err)
	}

	var wg sync.WaitGroup
	for _, n := range []*Barrier{a, b} {
		wg.Go(func() {
			for range 5 {
				if _, err := n.Rotate(ctx); err != nil {
					t.Errorf("Rotate: %v", err)
				}
			}
		})
	}
	wg.Wait()
	c := New(st)
	if err := c.Unseal(ctx, mk); err != nil {
		t.Fatal(err)
	}
	if got, want := len(c.ring.keys), 12; got != want {
		t.Errorf("keyring holds %d keys after 1+10 rotations, want %d", got, want)
	}
	if c.KeyVersion() != 12 {
		t.Errorf("active version %d, want 12", c.KeyVersion())
	}
}

func TestUnsealCreateRace(t *testing.T) {
	ctx := context.Background()
	st := &memStore{}
	mk := masterKey(t)
	bs := make([]*Barrier, 4)
	var wg sync.WaitGroup
	for i := range bs {
		bs[i] = New(st)
		wg.Go(func() {
			if err := bs[i].Unseal(ctx, mk); err != nil {
				t.Errorf("Unseal: %v", err)
			}
		})
	}
	wg.Wait()
	if st.saves != 1 {
		t.Errorf("keyring saved %d times, want 1", st.saves)
	}
	ct, err := bs[0].Seal(ctx, "k", "i", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range bs {
		if _, err := b.Open(ctx, "k", "i", ct); err != nil {
			t.Errorf("barrier %d: %v", i, err)
		}
	}
}

func TestStoreError(t *testing.T) {
	boom := errors.New("database is down")
	b := New(&memStore{loadErr: boom})
	err := b.Unseal(context.Background(), masterKey(t))
	if !errors.Is(err, boom) || !b.Sealed() {
		t.Fatalf("Unseal = %v (sealed %v), want the store error and still sealed", err, b.Sealed())
	}
}

func TestCorruptKeyring(t *testing.T) {
	ctx := context.Background()
	_, st, mk := unsealed(t)
	st.sealed = st.sealed[:len(st.sealed)-3]
	if err := New(st).Unseal(ctx, mk); err == nil {
		t.Fatal("Unseal accepted a truncated keyring")
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	b, _, _ := unsealed(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				id := fmt.Sprintf("%d-%d", g, i)
				ct, err := b.Seal(ctx, "k", id, []byte(id))
				if err != nil {
					t.Errorf("Seal: %v", err)
					return
				}
				if b.NeedsRewrap(ct) {
					if ct, err = b.Rewrap(ctx, "k", id, ct); err != nil {
						t.Errorf("Rewrap: %v", err)
						return
					}
				}
				pt, err := b.Open(ctx, "k", id, ct)
				if err != nil || string(pt) != id {
					t.Errorf("Open = %q, %v", pt, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 10 {
			if _, err := b.Rotate(ctx); err != nil {
				t.Errorf("Rotate: %v", err)
			}
		}
	})
	wg.Wait()
}

func FuzzOpen(f *testing.F) {
	ctx := context.Background()
	b, _, _ := unsealed(f)
	good, err := b.Seal(ctx, "k", "i", []byte("value"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "k", "i")
	f.Add(good[:Overhead], "k", "i")
	f.Add([]byte{formatV1, 0, 0, 0, 9}, "k", "i")
	f.Add([]byte{}, "", "")
	f.Fuzz(func(t *testing.T, ct []byte, kind, id string) {
		pt, err := b.Open(ctx, kind, id, ct)
		if err != nil {
			if !errors.Is(err, ErrIntegrity) {
				t.Fatalf("Open error %v is not ErrIntegrity", err)
			}
			if pt != nil {
				t.Fatal("bytes returned with an error")
			}
			return
		}
		// Only the genuine ciphertext for its own record may open.
		if !bytes.Equal(ct, good) || kind != "k" || id != "i" || string(pt) != "value" {
			t.Fatalf("forged ciphertext opened: %x for %q/%q -> %q", ct, kind, id, pt)
		}
	})
}

func BenchmarkSealOpen(b *testing.B) {
	ctx := context.Background()
	br, _, _ := unsealed(b)
	pt := make([]byte, 256)
	b.ReportAllocs()
	for b.Loop() {
		ct, err := br.Seal(ctx, "k", "i", pt)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := br.Open(ctx, "k", "i", ct); err != nil {
			b.Fatal(err)
		}
	}
}
