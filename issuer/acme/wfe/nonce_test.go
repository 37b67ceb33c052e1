package wfe_test

import (
	"bytes"
	"context"
	"encoding/base64"
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
	return newFrontCfg(t, wfe.Config{BaseURL: "https://acme.test/acme"}, st, nonces, sealer)
}

func newFrontCfg(t testing.TB, cfg wfe.Config, st storage.Store, nonces wfe.Store, sealer ra.Sealer) *wfe.WFE {
	t.Helper()
	authority, err := ra.New(ra.Config{Provisioners: []ra.Provisioner{{Name: "default", Open: true}}},
		ra.Deps{CA: noCA{}, VA: noVA{}, Store: st, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authority.Close() })
	f, err := wfe.New(cfg, authority, nonces, sealer)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// newLocal returns a front end with local nonces (its own SQLite store,
// which local nonces never touch) and limit used nonces remembered.
func newLocal(t testing.TB, limit int, now func() time.Time) *wfe.WFE {
	t.Helper()
	st := barriertest.OpenSQLite(t, filepath.Join(t.TempDir(), "sigil.db"))
	return newFrontCfg(t, wfe.Config{BaseURL: "https://acme.test/acme", LocalNonces: true, UsedNonceLimit: limit, Now: now},
		st, st, barriertest.Unsealed(t, st))
}

// books are the two nonce books, each as a function making a new front
// end (a node, or for local nonces a process) on one database.
var books = []struct {
	name string
	node func(t *testing.T, now func() time.Time) func() *wfe.WFE
}{
	{"stored", func(t *testing.T, now func() time.Time) func() *wfe.WFE {
		path := filepath.Join(t.TempDir(), "sigil.db")
		master := barriertest.MasterKey(t)
		return func() *wfe.WFE {
			st := barriertest.OpenSQLite(t, path)
			return newFrontCfg(t, wfe.Config{BaseURL: "https://acme.test/acme", Now: now}, st, st, barriertest.Open(t, st, master))
		}
	}},
	{"local", func(t *testing.T, now func() time.Time) func() *wfe.WFE {
		return func() *wfe.WFE { return newLocal(t, 0, now) }
	}},
}

// TestNonceConformance: what both nonce books promise. A nonce is
// accepted once; a forged, truncated, foreign-version or expired one is
// refused with ErrBadNonce, as is one whose expiry lies beyond the
// configured lifetime; 16 goroutines using one nonce see exactly one
// success.
func TestNonceConformance(t *testing.T) {
	for _, b := range books {
		t.Run(b.name, func(t *testing.T) {
			ctx := t.Context()
			var skew atomic.Int64
			now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			f := b.node(t, now)()
			n := mint(t, f, 1)[0]
			if err := wfe.UseNonce(ctx, f, n); err != nil {
				t.Fatalf("fresh nonce: %v", err)
			}
			if err := wfe.UseNonce(ctx, f, n); !errors.Is(err, wfe.ErrBadNonce) {
				t.Fatalf("replay: %v, want bad nonce", err)
			}
			fresh := mint(t, f, 1)[0]
			raw, err := base64.RawURLEncoding.DecodeString(fresh)
			if err != nil {
				t.Fatal(err)
			}
			flip := func(i int) string {
				c := bytes.Clone(raw)
				c[i] ^= 1
				return base64.RawURLEncoding.EncodeToString(c)
			}
			for name, bad := range map[string]string{
				"MAC changed":     flip(len(raw) - 1),
				"expiry changed":  flip(8),
				"id changed":      flip(12),
				"version changed": flip(0),
				"version 1 or 2 swapped": func() string {
					c := bytes.Clone(raw)
					c[0] = 3 - c[0]
					return base64.RawURLEncoding.EncodeToString(c)
				}(),
				"truncated":  fresh[:20],
				"empty":      "",
				"not base64": "!!!!",
				"padded":     fresh + "==",
			} {
				if err := wfe.UseNonce(ctx, f, bad); !errors.Is(err, wfe.ErrBadNonce) {
					t.Errorf("%s: %v, want bad nonce", name, err)
				}
			}
			if err := wfe.UseNonce(ctx, f, fresh); err != nil {
				t.Fatalf("the nonce the refused variants were made from: %v", err)
			}

			old := mint(t, f, 1)[0]
			skew.Store(int64(time.Hour + time.Second))
			if err := wfe.UseNonce(ctx, f, old); !errors.Is(err, wfe.ErrBadNonce) {
				t.Fatalf("expired: %v, want bad nonce", err)
			}
			skew.Store(int64(-3 * time.Hour)) // mints with expiry 1 h from a clock 3 h back...
			early := mint(t, f, 1)[0]
			skew.Store(int64(-5 * time.Hour)) // ...is used 5 h back: expiry 3 h ahead, beyond the lifetime
			if err := wfe.UseNonce(ctx, f, early); !errors.Is(err, wfe.ErrBadNonce) {
				t.Fatalf("expiry beyond the lifetime: %v, want bad nonce", err)
			}
			skew.Store(0)

			for round := range 5 {
				n := mint(t, f, 1)[0]
				var won, refused atomic.Int32
				var wg sync.WaitGroup
				for range 16 {
					wg.Go(func() {
						switch err := wfe.UseNonce(ctx, f, n); {
						case err == nil:
							won.Add(1)
						case errors.Is(err, wfe.ErrBadNonce):
							refused.Add(1)
						default:
							t.Errorf("round %d: %v", round, err)
						}
					})
				}
				wg.Wait()
				if won.Load() != 1 || refused.Load() != 15 {
					t.Fatalf("round %d: one nonce used 16 times: %d accepted, %d refused", round, won.Load(), refused.Load())
				}
			}
		})
	}
}

// TestLocalNoncesBound: local nonces are refused by every other process
// (a restart, or another server), and at most UsedNonceLimit used nonces
// are kept: past it the oldest used is forgotten and every nonce minted
// up to it is refused, used or not, so no forgotten nonce can be replayed.
func TestLocalNoncesBound(t *testing.T) {
	ctx := t.Context()
	f := newLocal(t, 4, nil)
	n := mint(t, f, 10)
	if err := wfe.UseNonce(ctx, newLocal(t, 4, nil), n[0]); !errors.Is(err, wfe.ErrBadNonce) {
		t.Fatalf("another process accepted a nonce: %v", err)
	}
	for i := 2; i <= 6; i++ { // five uses, one over the limit
		if err := wfe.UseNonce(ctx, f, n[i]); err != nil {
			t.Fatalf("nonce %d: %v", i, err)
		}
	}
	if got := wfe.UsedNonces(f); got != 4 {
		t.Fatalf("%d used nonces kept, want the limit, 4", got)
	}
	for _, i := range []int{0, 1, 2} { // up to the forgotten one: refused
		if err := wfe.UseNonce(ctx, f, n[i]); !errors.Is(err, wfe.ErrBadNonce) {
			t.Fatalf("nonce %d, at or below the oldest forgotten: %v, want bad nonce", i, err)
		}
	}
	for i := 3; i <= 6; i++ { // remembered: refused
		if err := wfe.UseNonce(ctx, f, n[i]); !errors.Is(err, wfe.ErrBadNonce) {
			t.Fatalf("nonce %d used again: %v, want bad nonce", i, err)
		}
	}
	for i := 7; i <= 9; i++ { // newer, unused: accepted
		if err := wfe.UseNonce(ctx, f, n[i]); err != nil {
			t.Fatalf("nonce %d: %v", i, err)
		}
	}
	if got := wfe.UsedNonces(f); got != 4 {
		t.Fatalf("%d used nonces kept, want 4", got)
	}

	// Cancelled: the caller's error, and the nonce stays unused.
	c, cancel := context.WithCancel(ctx)
	cancel()
	fresh := mint(t, f, 1)[0]
	if err := wfe.UseNonce(c, f, fresh); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v, want context.Canceled", err)
	}
	if err := wfe.UseNonce(ctx, f, fresh); err != nil {
		t.Fatalf("a nonce a cancelled request did not record: %v", err)
	}
}

// TestLocalNoncesWriteNothing: local nonces leave storage alone.
func TestLocalNoncesWriteNothing(t *testing.T) {
	st := barriertest.OpenSQLite(t, filepath.Join(t.TempDir(), "sigil.db"))
	f := newFrontCfg(t, wfe.Config{BaseURL: "https://acme.test/acme", LocalNonces: true}, st, st, barriertest.Unsealed(t, st))
	for _, n := range mint(t, f, 20) {
		if err := wfe.UseNonce(t.Context(), f, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.ACME().Get(t.Context(), "noncekey", "hmac-v1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("local nonces stored a key: %v", err)
	}
	if err := st.ACME().PutNonce(t.Context(), "probe", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, err := st.ACME().PruneNonces(t.Context(), time.Now().Add(2*time.Hour), 1000); err != nil || n != 1 {
		t.Fatalf("nonce table held %d rows besides the probe's one (err %v): local nonces wrote uses", n-1, err)
	}
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
