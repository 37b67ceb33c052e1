package wfe_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/issuer/acme/ra"
	"github.com/sigil-ca/sigil/issuer/acme/wfe"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// The RA is required by wfe.New but takes no part in nonces.
type noCA struct{ ra.CA }
type noVA struct{ ra.VA }

// backends open stores on one fresh database each: every call of the
// returned function is another node on the same database.
var backends = []struct {
	name string
	db   func(t *testing.T) func() storage.Store
}{
	{"sqlite", func(t *testing.T) func() storage.Store {
		path := filepath.Join(t.TempDir(), "sigil.db")
		return func() storage.Store { return barriertest.OpenSQLite(t, path) }
	}},
	{"postgres", func(t *testing.T) func() storage.Store {
		dsn := testharness.StartPostgres(t)
		return func() storage.Store {
			st, err := postgres.Open(context.Background(), dsn, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
	}},
}

// newNodes returns n front ends, each over its own store on one database
// and all unsealed with one master key, as n nodes of a cluster are.
func newNodes(t *testing.T, open func() storage.Store, n int) []*wfe.WFE {
	t.Helper()
	master := barriertest.MasterKey(t)
	var out []*wfe.WFE
	for range n {
		st := open()
		out = append(out, newFront(t, st, st, barriertest.Open(t, st, master)))
	}
	return out
}

func newFront(t testing.TB, st storage.Store, nonces wfe.Store, sealer ra.Sealer) *wfe.WFE {
	t.Helper()
	authority, err := ra.New(ra.Config{Provisioners: []ra.Provisioner{{Name: "default", Open: true}}},
		ra.Deps{CA: noCA{}, VA: noVA{}, Store: st, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authority.Close() })
	f, err := wfe.New(wfe.Config{BaseURL: "https://acme.test/acme"}, authority, nonces, sealer)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mint(t *testing.T, f *wfe.WFE, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		var err error
		if out[i], err = wfe.MakeNonce(t.Context(), f); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestUseNonceConcurrent: concurrent uses of distinct nonces all succeed,
// and of one nonce, from many goroutines on one node or on two nodes of
// one database, exactly one succeeds and the others are refused.
func TestUseNonceConcurrent(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			ctx := t.Context()
			nodes := newNodes(t, b.db(t), 2)

			fresh := mint(t, nodes[0], 32)
			errs := make([]error, len(fresh))
			var wg sync.WaitGroup
			for i, n := range fresh {
				wg.Go(func() { errs[i] = wfe.UseNonce(ctx, nodes[i%2], n) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("distinct nonce %d: %v", i, err)
				}
				if err := wfe.UseNonce(ctx, nodes[1-i%2], fresh[i]); !errors.Is(err, wfe.ErrBadNonce) {
					t.Fatalf("distinct nonce %d used again: %v, want bad nonce", i, err)
				}
			}

			for _, tt := range []struct {
				name  string
				nodes []*wfe.WFE
			}{{"one node", nodes[:1]}, {"two nodes", nodes}} {
				for round := range 5 {
					n := mint(t, nodes[0], 1)[0]
					var won, refused atomic.Int32
					for i := range 16 {
						wg.Go(func() {
							err := wfe.UseNonce(ctx, tt.nodes[i%len(tt.nodes)], n)
							switch {
							case err == nil:
								won.Add(1)
							case errors.Is(err, wfe.ErrBadNonce):
								refused.Add(1)
							default:
								t.Errorf("%s, round %d: %v", tt.name, round, err)
							}
						})
					}
					wg.Wait()
					if won.Load() != 1 || refused.Load() != 15 {
						t.Fatalf("%s, round %d: one nonce used 16 times: %d accepted, %d refused", tt.name, round, won.Load(), refused.Load())
					}
				}
			}
		})
	}
}

// TestUseNonceCancelled: a caller whose context has ended gets its error,
// not a verdict on the nonce, and the nonce stays unused.
func TestUseNonceCancelled(t *testing.T) {
	f := newNodes(t, backends[0].db(t), 1)[0]
	n := mint(t, f, 1)[0]
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := wfe.UseNonce(ctx, f, n); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v, want context.Canceled", err)
	}
	if err := wfe.UseNonce(t.Context(), f, n); err != nil {
		t.Fatalf("a nonce a cancelled request did not record: %v", err)
	}
}

// TestUseNonceStorageFailure: a storage failure is an error, not badNonce.
func TestUseNonceStorageFailure(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFront(t, st, st, barriertest.Unsealed(t, st))
	n := mint(t, f, 2) // loads the nonce key, which is then cached
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	errs := make([]error, len(n))
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = wfe.UseNonce(t.Context(), f, n[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil || errors.Is(err, wfe.ErrBadNonce) {
			t.Errorf("nonce %d on a closed store: %v, want a storage error", i, err)
		}
	}
}

// BenchmarkUseNonce uses fresh nonces from 16 goroutines on SQLite, as
// the JWS POSTs of 16 ACME clients do; cpu-ms/op is the process's CPU.
func BenchmarkUseNonce(b *testing.B) {
	st, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "sigil.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	f := newFront(b, st, st, barriertest.Unsealed(b, st))
	nonces := make(chan string, b.N)
	for range b.N {
		n, err := wfe.MakeNonce(b.Context(), f)
		if err != nil {
			b.Fatal(err)
		}
		nonces <- n
	}
	close(nonces)
	cpu0 := cpuTime()
	b.ResetTimer()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := wfe.UseNonce(context.Background(), f, <-nonces); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
