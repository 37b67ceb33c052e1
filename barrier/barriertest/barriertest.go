// Package barriertest gives tests the real thing in place of a sealer: a
// barrier unsealed over the keyring of a real SQLite store. Tests that need
// "storage plus an unsealed barrier" build it here instead of by hand, and
// tests of packages that must not import the barrier (ca, issuer/acme) use
// it as their hsm.Sealer / acme.Sealer.
package barriertest

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"testing"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// MasterKey returns a fresh random master key.
func MasterKey(t testing.TB) []byte {
	t.Helper()
	mk := make([]byte, barrier.MasterKeySize)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	return mk
}

// SQLite opens a fresh SQLite store in a temporary directory; it is closed
// when the test ends.
func SQLite(t testing.TB) storage.Store {
	t.Helper()
	return OpenSQLite(t, filepath.Join(t.TempDir(), "sigil.db"))
}

// OpenSQLite opens (or reopens) the SQLite store at path; it is closed
// when the test ends.
func OpenSQLite(t testing.TB, path string) storage.Store {
	t.Helper()
	// Not t.Context(): the store outlives the test body until its cleanup.
	st, err := sqlite.Open(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Open returns a new barrier over st's keyring, unsealed with master, as a
// (re)started process holds it: nothing cached from an earlier barrier.
func Open(t testing.TB, st storage.Store, master []byte) *barrier.Barrier {
	t.Helper()
	b := barrier.New(adapt.Keyring(st.Keyring()))
	if err := b.Unseal(t.Context(), master); err != nil {
		t.Fatal(err)
	}
	return b
}

// Unsealed returns a barrier over st's keyring unsealed with a fresh
// master key.
func Unsealed(t testing.TB, st storage.Store) *barrier.Barrier {
	t.Helper()
	return Open(t, st, MasterKey(t))
}

// New returns a fresh SQLite store and a barrier unsealed over it.
func New(t testing.TB) (storage.Store, *barrier.Barrier) {
	t.Helper()
	st := SQLite(t)
	return st, Unsealed(t, st)
}
