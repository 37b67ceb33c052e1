package lease_test

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// leaseCount is how many active leases BenchmarkRestartReady seeds:
// go test -run '^$' -bench RestartReady ./lease/ -args -lease-count 1000000
var leaseCount = flag.Int("lease-count", 100_000, "active leases seeded by BenchmarkRestartReady")

// countingEngine revokes by counting: the benchmarks measure the worker and
// storage, not a backend, and it keeps nothing per credential (so the heap
// the benchmarks report is the manager's). It checks that every revocation
// carries the data sealed at mint time.
type countingEngine struct {
	testEngine
	revoked atomic.Int64
	bad     atomic.Int64
}

func (c *countingEngine) Revoke(_ context.Context, rev []byte) error {
	if !strings.HasPrefix(string(rev), "u-db/r/") {
		c.bad.Add(1)
	}
	c.revoked.Add(1)
	return nil
}

// seedLeases stores n active leases expiring at exp(i), 1,000 per
// transaction, with sealed revocation data as Mint would write it, and
// returns their ids. The ids are random like Mint's (db/r/ and 26 base32
// letters), so their index entries are spread over the whole index as in
// a real store; the revocation data is "u-" and the id.
func seedLeases(b *testing.B, e *env, n int, exp func(i int) time.Time) []string {
	b.Helper()
	return seedLeaseRows(b, e, n, exp, false)
}

// seedLeaseRows is seedLeases; with sized set, each row is about as large
// as one the tokens engine mints through the server (an identity and an
// owner of a token's length, revocation data of ≈130 bytes), so the table
// spans as many pages as a real one of n leases.
func seedLeaseRows(b *testing.B, e *env, n int, exp func(i int) time.Time, sized bool) []string {
	b.Helper()
	ctx := context.Background()
	const chunk = 1000
	issued := time.Now().Add(-time.Hour).UTC()
	ids := make([]string, n)
	for i := range ids {
		var r [16]byte
		_, _ = rand.Read(r[:])
		ids[i] = "db/r/" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(r[:]))
	}
	for i := 0; i < n; i += chunk {
		err := e.store.InTx(ctx, func(tx storage.Repos) error {
			for j := i; j < min(i+chunk, n); j++ {
				id := ids[j]
				rev, who := "u-"+id, ""
				if sized {
					rev += `,"format":"opaque","hash":"` + strings.Repeat("h", 44) + `","sub":"token:` + id[5:] + `","role":"r"}`
					who = "token:" + id[5:]
				}
				sealed, err := e.bar.Seal(ctx, lease.SealKind, id, []byte(rev))
				if err != nil {
					return err
				}
				x := exp(j)
				if err := tx.Leases().Put(ctx, &storage.Lease{ID: id, Mount: "db", Role: "r", IssuedAt: issued,
					ExpiresAt: x, MaxExpiresAt: x, SealedRevocation: sealed, Identity: who, Owner: who}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return ids
}

func (e *env) countingMount(b *testing.B) *countingEngine {
	b.Helper()
	c := &countingEngine{}
	if err := e.reg.Register("counting", func(engines.Env) (engines.Engine, error) { return c, nil }); err != nil {
		b.Fatal(err)
	}
	e.mount("db", "counting", map[string]map[string]string{"r": {}})
	return c
}

// heapObjects reads the live heap cheaply (no stop-the-world).
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// BenchmarkExpiryWorker measures expiry revocations per second through the
// worker (claim a batch, open each lease's sealed revocation data, revoke
// with bounded parallelism, record the batch in one transaction) on
// SQLite, with b.N leases already due when the manager starts — the state
// after a restart — at the manager's default batch size and concurrency.
// The expiries are a microsecond apart, oldest first. It reports the peak
// heap during the run and the heap left afterwards: the worker holds one
// batch at a time, never the lease set. For the 1,000,000 figure:
// go test -run '^$' -bench ExpiryWorker -benchtime 1000000x ./lease/
func BenchmarkExpiryWorker(b *testing.B) {
	ctx := context.Background()
	e := newEnvB(b)
	eng := e.countingMount(b)
	past := time.Now().Add(-time.Hour).UTC()
	seedLeases(b, e, b.N, func(i int) time.Time { return past.Add(time.Duration(i) * time.Microsecond) })
	measureExpiry(ctx, b, e, eng, "")
	runtime.GC()
	b.ReportMetric(float64(heapObjects())/(1<<20), "heap-after-MiB")
}

// measureExpiry starts a lease manager over e's b.N due leases and times
// it until all are expired (with a CPU profile of the expiry alone when
// cpuProfile is set), checks eng revoked each once with the right data,
// and reports the rate and the peak heap growth.
func measureExpiry(ctx context.Context, b *testing.B, e *env, eng *countingEngine, cpuProfile string) {
	m, err := lease.New(lease.Config{Store: e.store, Sealer: e.bar, Engines: e.mounts, PollInterval: 10 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	base := heapObjects()
	peak := base
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	b.ResetTimer()
	start := time.Now()
	m.Start(ctx)
	for m.Stats().Expired < uint64(b.N) {
		time.Sleep(5 * time.Millisecond)
		peak = max(peak, heapObjects())
	}
	el := time.Since(start)
	b.StopTimer()
	m.Stop()
	if n := eng.revoked.Load(); n != int64(b.N) || eng.bad.Load() != 0 {
		b.Fatalf("engine revoked %d (%d with wrong data), want %d", n, eng.bad.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "revocations/s")
	b.ReportMetric(float64(peak-min(base, peak))/(1<<20), "peak-heap-growth-MiB")
}

// expiryCPUProfile, when set, is where BenchmarkExpiryWorkerScattered
// writes a CPU profile of its expiry (not of the seeding before it).
var expiryCPUProfile = flag.String("expiry-cpuprofile", "", "BenchmarkExpiryWorkerScattered: write a CPU profile of the expiry here")

// BenchmarkExpiryWorkerScattered is BenchmarkExpiryWorker with the layout
// the server's leases scenario leaves: rows of a real tokens-engine
// lease's size, and expiries scattered over one second in an order
// unrelated to the order the rows were written (whole-second TTLs on
// leases minted over minutes), so claiming them in due order visits table
// pages at random, as the server does. For the figure:
// go test -run '^$' -bench ExpiryWorkerScattered -benchtime 1000000x ./lease/
func BenchmarkExpiryWorkerScattered(b *testing.B) {
	ctx := context.Background()
	e := newEnvB(b)
	eng := e.countingMount(b)
	past := time.Now().Add(-time.Hour).UTC()
	seedLeaseRows(b, e, b.N, func(int) time.Time {
		return past.Add(time.Duration(mrand.Int64N(int64(time.Second))))
	}, true)
	measureExpiry(ctx, b, e, eng, *expiryCPUProfile)
}

// BenchmarkRestartReady measures what a restart does before the server can
// answer, with -lease-count active leases in the store (100,000 unless
// told; the figure needs -args -lease-count 1000000) and the claims
// of a crashed run's batch on some of them: open and migrate the store,
// unseal the barrier, release the stale claims, build the manager and
// start its worker. One op is one restart; the heap the restart allocates
// is reported too. Both must stay flat as the lease count grows.
func BenchmarkRestartReady(b *testing.B) {
	ctx := context.Background()
	e := newEnvB(b)
	e.countingMount(b)
	future := time.Now().Add(24 * time.Hour).UTC()
	seedLeases(b, e, *leaseCount, func(i int) time.Time { return future.Add(time.Duration(i) * time.Microsecond) })
	crash := func(round int) {
		// A crashed run's claim on one batch of due leases (new ones each
		// round: the restarted worker revokes them), held for an hour
		// unless the restart releases it.
		past := time.Now().Add(-time.Minute).UTC()
		err := e.store.InTx(ctx, func(tx storage.Repos) error {
			for i := range 100 {
				id := fmt.Sprintf("db/r/crash-%06d-%03d", round, i)
				sealed, err := e.bar.Seal(ctx, lease.SealKind, id, []byte("u-"+id))
				if err != nil {
					return err
				}
				if err := tx.Leases().Put(ctx, &storage.Lease{ID: id, Mount: "db", Role: "r", IssuedAt: past,
					ExpiresAt: past, MaxExpiresAt: past, SealedRevocation: sealed}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		t := time.Now().UTC()
		got, err := e.store.Leases().ClaimDue(ctx, t, t.Add(time.Hour), 100)
		if err != nil || len(got) != 100 {
			b.Fatalf("claim: %d, %v", len(got), err)
		}
	}
	b.ReportMetric(float64(*leaseCount), "leases")
	var allocated uint64
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		crash(round)
		if err := e.store.Close(); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b.StartTimer()

		e.open() // store, barrier, mounts
		n, err := e.store.Leases().ReleaseClaims(ctx)
		if err != nil || n != 100 {
			b.Fatalf("release claims: %d, %v", n, err)
		}
		m, err := lease.New(lease.Config{Store: e.store, Sealer: e.bar, Engines: e.mounts})
		if err != nil {
			b.Fatal(err)
		}
		m.Start(ctx)

		b.StopTimer()
		runtime.ReadMemStats(&after)
		allocated += after.TotalAlloc - before.TotalAlloc
		m.Stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(allocated)/float64(b.N)/(1<<20), "alloc-MiB/op")
}

// rowEngine revokes by deleting one stored record per credential, as an
// engine keeping per-secret state in storage does (Sigil's API tokens, an
// engine's sealed Store). With batch set it also implements
// lease.BatchRevoker, deleting a batch's records in one transaction.
type rowEngine struct {
	testEngine
	store storage.Store
}

func (r *rowEngine) Revoke(ctx context.Context, rev []byte) error {
	err := r.store.Settings().Delete(ctx, "bench/"+string(rev))
	if errors.Is(err, storage.ErrNotFound) {
		return nil // idempotent
	}
	return err
}

type batchRowEngine struct{ rowEngine }

func (r *batchRowEngine) RevokeBatch(ctx context.Context, revs [][]byte) []error {
	out := make([]error, len(revs))
	err := r.store.InTx(ctx, func(tx storage.Repos) error {
		for i, rev := range revs {
			if err := tx.Settings().Delete(ctx, "bench/"+string(rev)); err != nil && !errors.Is(err, storage.ErrNotFound) {
				out[i] = err
			}
		}
		return nil
	})
	if err != nil {
		for i := range out {
			out[i] = err
		}
	}
	return out
}

// BenchmarkExpiryWorkerStoredSecrets is BenchmarkExpiryWorker with an
// engine that deletes one stored record per revocation, one transaction
// each ("one-by-one") or one per batch through lease.BatchRevoker
// ("batch"): what an engine's storage writes cost the expiry rate on
// SQLite, whose writers are serialised.
func BenchmarkExpiryWorkerStoredSecrets(b *testing.B) {
	for _, batch := range []bool{false, true} {
		name := "one-by-one"
		if batch {
			name = "batch"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			e := newEnvB(b)
			var eng engines.Engine = &rowEngine{store: e.store}
			if batch {
				eng = &batchRowEngine{rowEngine{store: e.store}}
			}
			if err := e.reg.Register("rows", func(engines.Env) (engines.Engine, error) { return eng, nil }); err != nil {
				b.Fatal(err)
			}
			e.mount("db", "rows", map[string]map[string]string{"r": {}})
			past := time.Now().Add(-time.Hour).UTC()
			ids := seedLeases(b, e, b.N, func(i int) time.Time { return past.Add(time.Duration(i) * time.Microsecond) })
			for i := 0; i < b.N; i += 1000 {
				err := e.store.InTx(ctx, func(tx storage.Repos) error {
					for j := i; j < min(i+1000, b.N); j++ {
						if err := tx.Settings().Put(ctx, "bench/u-"+ids[j], []byte("x")); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			m, err := lease.New(lease.Config{Store: e.store, Sealer: e.bar, Engines: e.mounts, PollInterval: 10 * time.Millisecond})
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			m.Start(ctx)
			for m.Stats().Expired < uint64(b.N) {
				time.Sleep(5 * time.Millisecond)
			}
			el := time.Since(start)
			b.StopTimer()
			m.Stop()
			if st := m.Stats(); st.Failures != 0 {
				b.Fatalf("stats %+v", st)
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "revocations/s")
		})
	}
}
