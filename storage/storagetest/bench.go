package storagetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// BenchCertificatePut measures Certificates.Put throughput from 4×GOMAXPROCS
// parallel writers on s (a CA signs for many clients at once).
func BenchCertificatePut(b *testing.B, s storage.Store) {
	ctx := b.Context()
	der := make([]byte, 700) // a typical leaf certificate's size
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			serial := fmt.Sprintf("%016x", n.Add(1))
			c := &storage.Certificate{Serial: serial, IssuerID: "iss", Subject: "CN=" + serial,
				DNSNames: []string{serial + ".example"}, NotBefore: time.Now(),
				NotAfter: time.Now().Add(24 * time.Hour), Profile: "server", DER: der}
			if err := s.Certificates().Put(ctx, c); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

// BenchClaimDue measures Leases.ClaimDue claiming batches of 100 due leases
// (one op is one batch). Outside the timer it settles each batch as a worker
// would (claimed leases leave the active set; otherwise every later claim
// would scan past them) and reseeds when the due set runs dry.
func BenchClaimDue(b *testing.B, s storage.Store) {
	const batch, seed = 100, 2000
	ctx := b.Context()
	now := time.Now()
	next, claimed := 0, 0
	for b.Loop() {
		got, err := s.Leases().ClaimDue(ctx, now, now.Add(time.Hour), batch)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		claimed += len(got)
		var writes []func(storage.Repos) error
		for _, l := range got {
			writes = append(writes, func(r storage.Repos) error {
				return r.Leases().SetState(ctx, l.ID, storage.LeaseRevoked, 1, time.Time{}, "")
			})
		}
		if len(got) == 0 {
			for range seed {
				next++
				l := &storage.Lease{ID: fmt.Sprintf("bench/role/%09d", next), Mount: "bench/", Role: "role",
					IssuedAt: now.Add(-time.Hour), ExpiresAt: now.Add(-time.Minute), State: storage.LeaseActive}
				writes = append(writes, func(r storage.Repos) error { return r.Leases().Put(ctx, l) })
			}
		}
		if err := untimedWrites(ctx, s, writes); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(claimed)/b.Elapsed().Seconds(), "leases/s")
}

// untimedWrites runs a benchmark's setup writes as fast as the backend
// allows, only to keep the benchmark's wall time short: one transaction
// where writers serialise anyway (SQLite), parallel round trips elsewhere.
func untimedWrites(ctx context.Context, s storage.Store, writes []func(storage.Repos) error) error {
	if s.Backend() == "sqlite" {
		return s.InTx(ctx, func(tx storage.Repos) error {
			for _, w := range writes {
				if err := w(tx); err != nil {
					return err
				}
			}
			return nil
		})
	}
	const workers = 8
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for i := range workers {
		wg.Go(func() {
			for j := i; j < len(writes); j += workers {
				if err := writes[j](s); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
