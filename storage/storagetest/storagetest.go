// Package storagetest is the conformance suite every storage backend must
// pass: each repository method's contract (round trips of every field,
// ErrNotFound, ErrConflict, pagination, filters, batched pruning, keyring
// optimistic concurrency, lease claiming), transactions, and behaviour under
// concurrent writers and claimers.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// Run runs the suite. open must return a new, empty, migrated store; Run
// closes it when the subtest that opened it ends. Groups run in parallel,
// each on its own store.
func Run(t *testing.T, open func(t *testing.T) storage.Store) {
	groups := []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"Certificates", testCertificates},
		{"CertificateList", testCertList},
		{"Issuers", testIssuers},
		{"KeyBlobs", testKeyBlobs},
		{"Keyring", testKeyring},
		{"Tokens", testTokens},
		{"Mounts", testMounts},
		{"Leases", testLeases},
		{"LeaseOutcomes", testLeaseOutcomes},
		{"Settings", testSettings},
		{"Transactions", testTransactions},
		{"ConcurrentWriters", testConcurrentWriters},
		{"ClaimDueExclusive", testClaimDueExclusive},
		{"Context", testContext},
		{"PoliciesAudit", testPoliciesAudit},
		{"ACME", testACME},
		{"KV", testKV},
		{"CRLs", testCRLs},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			if err := s.Ping(t.Context()); err != nil {
				t.Fatalf("ping: %v", err)
			}
			g.fn(t, s)
		})
	}
}

// base is an awkward instant: nanoseconds beyond what storage keeps and a
// non-UTC zone, so round trips prove normalisation to µs and UTC.
var base = time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.FixedZone("X", 5*3600+1800))

// at returns base plus d.
func at(d time.Duration) time.Time { return base.Add(d) }

// norm is what storage promises to return for t.
func norm(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.Truncate(time.Microsecond).UTC()
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// same fails the test unless got and want are deeply equal.
func same(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

func ids[T any](xs []*T, key func(*T) string) []string {
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		out = append(out, key(x))
	}
	return out
}

func seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%02d", prefix, i)
	}
	return out
}

// testContext checks that methods give up on a cancelled context and say so.
func testContext(t *testing.T, s storage.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	calls := []struct {
		name string
		call func() error
	}{
		{"Certificates.Get", func() error { _, err := s.Certificates().Get(ctx, "x"); return err }},
		{"Certificates.Put", func() error { return s.Certificates().Put(ctx, &storage.Certificate{Serial: "x"}) }},
		{"Leases.ClaimDue", func() error { _, err := s.Leases().ClaimDue(ctx, base, base, 1); return err }},
		{"Settings.Put", func() error { return s.Settings().Put(ctx, "x", nil) }},
		{"InTx", func() error { return s.InTx(ctx, func(storage.Repos) error { return nil }) }},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: %v, want context.Canceled", c.name, err)
		}
	}
}
