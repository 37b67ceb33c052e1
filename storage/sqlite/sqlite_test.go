package sqlite_test

import (
	"bytes"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/sqlite"
	"github.com/sigil-ca/sigil/storage/storagetest"
)

func open(t testing.TB) storage.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return open(t) })
}

func TestFile(t *testing.T) {
	dir := t.TempDir()
	// A '?' and a '#' in the path must not be read as URI syntax.
	path := filepath.Join(dir, "odd?name#x.db")
	s, err := sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if err := s.Settings().Put(t.Context(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Errorf("no write-ahead log beside the database: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("database file not at the given path: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	// Reopening finds the data and applies no migration twice.
	s, err = sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if v, err := s.Settings().Get(t.Context(), "k"); err != nil || string(v) != "v" {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
	if s.Backend() != "sqlite" {
		t.Fatalf("backend %q", s.Backend())
	}
}

// TestConcurrentOpen has several Opens of one new file race; the migration
// lock makes exactly one create the schema.
func TestConcurrentOpen(t *testing.T) {
	for round := range 5 {
		path := filepath.Join(t.TempDir(), "sigil.db")
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Go(func() {
				s, err := sqlite.Open(t.Context(), path, nil)
				if err != nil {
					t.Errorf("round %d open %d: %v", round, i, err)
					return
				}
				if err := s.Settings().Put(t.Context(), "k", []byte{byte(i)}); err != nil {
					t.Errorf("round %d write %d: %v", round, i, err)
				}
				_ = s.Close()
			})
		}
		wg.Wait()
	}
}

// TestBackgroundCheckpoint: committed pages reach the database file by the
// background checkpoint, well below SQLite's in-commit threshold (which no
// commit should pay for: it held the write gate through an fsync).
func TestBackgroundCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sigil.db")
	s, err := sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	// ~100 commits of 8 KiB each: ~300 pages in the write-ahead log, under
	// SQLite's default automatic checkpoint of 1000 pages.
	val := bytes.Repeat([]byte{0x5a}, 8<<10)
	for i := range 100 {
		if err := s.Settings().Put(t.Context(), fmt.Sprintf("k%03d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for size() < before+100*8<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("database file %d bytes (was %d): the log was not checkpointed in the background", size(), before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkCertificatePut(b *testing.B) { storagetest.BenchCertificatePut(b, openBench(b)) }

func BenchmarkLeaseClaimDue(b *testing.B) { storagetest.BenchClaimDue(b, openBench(b)) }

func openBench(b *testing.B) storage.Store {
	s := open(b)
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// TestSchemaTooNew: see storagetest.SchemaTooNew.
func TestSchemaTooNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sigil.db")
	s, err := sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	storagetest.SchemaTooNew(t, db, func() (storage.Store, error) { return sqlite.Open(t.Context(), path, nil) })
}

// TestSync: every pooled connection runs with synchronous=NORMAL (1) by
// default and FULL (2) with FullSync.
func TestSync(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts []sqlite.Option
		want int
	}{
		{"default", nil, 1},
		{"full", []sqlite.Option{sqlite.FullSync()}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "sigil.db"), nil, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			db := s.(interface{ DB() *sql.DB }).DB()
			var conns []*sql.Conn
			for range 4 { // distinct connections, each with its own pragmas
				c, err := db.Conn(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				var got int
				if err := c.QueryRowContext(t.Context(), `PRAGMA synchronous`).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != tt.want {
					t.Fatalf("connection %d: synchronous = %d, want %d", len(conns), got, tt.want)
				}
			}
			for _, c := range conns {
				c.Close()
			}
		})
	}
}
