package postgres_test

import (
	"database/sql"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqldb"
	"github.com/sigil-ca/sigil/storage/storagetest"
)

func TestMain(m *testing.M) { testharness.Main(m) }

func open(t testing.TB) storage.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), testharness.StartPostgres(t), nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return open(t) })
}

// TestConcurrentOpen has several nodes open (and so migrate) one fresh
// database at once; the advisory lock makes exactly one apply migrations.
func TestConcurrentOpen(t *testing.T) {
	dsn := testharness.StartPostgres(t)
	const nodes = 4
	stores := make([]storage.Store, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() { stores[i], errs[i] = postgres.Open(t.Context(), dsn, nil) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	for i, s := range stores {
		if err := s.Settings().Put(t.Context(), "node", []byte{byte(i)}); err != nil {
			t.Fatalf("node %d write: %v", i, err)
		}
	}
	if stores[0].Backend() != "postgres" {
		t.Fatalf("backend %q", stores[0].Backend())
	}
}

func TestBadDSN(t *testing.T) {
	_, err := postgres.Open(t.Context(), "postgres://u:s3cret-pw@127.0.0.1:1/x?connect_timeout=1&sslmode=disable", nil)
	if err == nil {
		t.Fatal("open succeeded")
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("error leaks the password: %v", err)
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
	dsn := testharness.StartPostgres(t)
	s, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	storagetest.SchemaTooNew(t, db, func() (storage.Store, error) { return postgres.Open(t.Context(), dsn, nil) })
}

// TestPoolKeepsItsConnections: a burst as wide as the pool closes no
// connection when it ends. With fewer idle than open connections allowed,
// every burst past the idle limit closed the extra connections and the
// next opened them again (a backend fork and an authentication each):
// ACME on PostgreSQL ran at 77/s instead of 119/s.
func TestPoolKeepsItsConnections(t *testing.T) {
	st := open(t)
	defer st.Close()
	db := st.(*sqldb.Store).DB()
	width := db.Stats().MaxOpenConnections
	for round := range 5 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range width {
			wg.Go(func() {
				<-start
				if _, err := db.ExecContext(t.Context(), `SELECT pg_sleep(0.05)`); err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		if s := db.Stats(); s.MaxIdleClosed != 0 || s.OpenConnections != width {
			t.Fatalf("round %d: %d connections closed for the idle limit, %d open, want 0 and %d", round, s.MaxIdleClosed, s.OpenConnections, width)
		}
	}
}
