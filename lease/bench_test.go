package lease_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// BenchmarkExpiryWorker measures expiry revocations per second through the
// worker (claim, open sealed revocation data, engine revoke, record) on
// SQLite, with b.N leases already due when the manager starts — the state
// after a restart. It also reports the heap in use once all are revoked:
// the worker holds one batch at a time, never the lease set.
func BenchmarkExpiryWorker(b *testing.B) {
	ctx := context.Background()
	e := newEnvB(b)
	e.mount("db", "test", map[string]map[string]string{"r": {}})
	past := time.Now().Add(-time.Minute).UTC()
	const chunk = 500
	for i := 0; i < b.N; i += chunk {
		err := e.store.InTx(ctx, func(tx storage.Repos) error {
			for j := i; j < min(i+chunk, b.N); j++ {
				id := fmt.Sprintf("db/r/%012d", j)
				name := "u" + id
				sealed, err := e.bar.Seal(ctx, lease.SealKind, id, []byte(name))
				if err != nil {
					return err
				}
				e.b.live[name] = past
				if err := tx.Leases().Put(ctx, &storage.Lease{ID: id, Mount: "db", Role: "r", IssuedAt: past, ExpiresAt: past, MaxExpiresAt: past, SealedRevocation: sealed}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	m, err := lease.New(lease.Config{Store: e.store, Sealer: e.bar, Engines: e.mounts, PollInterval: 10 * time.Millisecond, BatchSize: 500, Concurrency: 8})
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
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(b.N)/el.Seconds(), "revocations/s")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
}
