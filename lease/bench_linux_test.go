package lease_test

import (
	"context"
	"flag"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// claimTable is how many leases BenchmarkClaimRecord seeds:
// go test -run '^$' -bench ClaimRecord -benchtime 40x ./lease/ -args -claim-table 1000000
var claimTable = flag.Int("claim-table", 200_000, "leases seeded by BenchmarkClaimRecord")

// procIO reads the bytes this process passed to read and write system
// calls (pread and pwrite included).
func procIO(b *testing.B) (read, written int64) {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skipf("no /proc/self/io: %v", err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "rchar":
			read = n
		case "wchar":
			written = n
		}
	}
	return read, written
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkClaimRecord measures the expiry worker's storage work alone on
// SQLite: one op claims a batch of 500 due leases (ClaimDue) and records
// them revoked (SetStates), on a table of -claim-table leases laid out as
// BenchmarkExpiryWorkerScattered's. It reports the process CPU per lease
// (system calls included, and the background checkpoint) and the bytes
// read and written per lease, which a shared machine's load does not move
// the way it moves a rate.
func BenchmarkClaimRecord(b *testing.B) {
	ctx := context.Background()
	e := newEnvB(b)
	past := time.Now().Add(-time.Hour).UTC()
	seedLeaseRows(b, e, *claimTable, func(int) time.Time {
		return past.Add(time.Duration(mrand.Int64N(int64(time.Second))))
	}, true)
	const batch = 500
	if b.N*batch > *claimTable {
		b.Skipf("%d ops of %d leases need a larger -claim-table than %d", b.N, batch, *claimTable)
	}
	r0, w0 := procIO(b)
	c0 := processCPU()
	b.ResetTimer()
	n := 0
	for range b.N {
		t := time.Now()
		got, err := e.store.Leases().ClaimDue(ctx, t, t.Add(15*time.Second), batch)
		if err != nil {
			b.Fatal(err)
		}
		out := make([]storage.LeaseOutcome, len(got))
		for i, l := range got {
			out[i] = storage.LeaseOutcome{ID: l.ID, Claim: l.ClaimedUntil, State: storage.LeaseRevoked, Attempts: 1}
		}
		rec, err := e.store.Leases().SetStates(ctx, out)
		if err != nil {
			b.Fatal(err)
		}
		for i, ok := range rec {
			if !ok {
				b.Fatalf("outcome of %s not recorded", out[i].ID)
			}
		}
		n += len(got)
	}
	b.StopTimer()
	if n != b.N*batch {
		b.Fatalf("claimed %d leases, want %d", n, b.N*batch)
	}
	r1, w1 := procIO(b)
	b.ReportMetric(float64((processCPU()-c0).Microseconds())/float64(n), "cpu-us/lease")
	b.ReportMetric(float64(r1-r0)/float64(n)/1024, "read-KiB/lease")
	b.ReportMetric(float64(w1-w0)/float64(n)/1024, "written-KiB/lease")
}
