package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

func lease(id string, expires time.Time) *storage.Lease {
	return &storage.Lease{ID: id, Mount: "db/", Role: "ro", Identity: "alice",
		IssuedAt: at(-time.Hour), ExpiresAt: expires, Renewable: true,
		SealedRevocation: []byte("rev-" + id), State: storage.LeaseActive}
}

func leaseIDs(ls []*storage.Lease) []string {
	return ids(ls, func(l *storage.Lease) string { return l.ID })
}

func testLeases(t *testing.T, s storage.Store) {
	ctx := t.Context()
	ls := s.Leases()

	t.Run("RoundTrip", func(t *testing.T) {
		full := storage.Lease{ID: "rt/role/1", Mount: "rt/", Role: "role", Identity: "token:x",
			IssuedAt: at(0), ExpiresAt: at(time.Hour), MaxExpiresAt: at(24 * time.Hour), Renewable: true,
			SealedRevocation: []byte{1, 2, 3}, State: storage.LeaseIrrevocable, Attempts: 6,
			NextAttemptAt: at(2 * time.Hour), LastError: "connection refused", ClaimedUntil: at(time.Minute), Owner: "spiffe://sigil.test/ns/a/owner"}
		in := full
		must(t, "put", ls.Put(ctx, &in))
		got, err := ls.Get(ctx, full.ID)
		must(t, "get", err)
		want := full
		for _, p := range []*time.Time{&want.IssuedAt, &want.ExpiresAt, &want.MaxExpiresAt, &want.NextAttemptAt, &want.ClaimedUntil} {
			*p = norm(*p)
		}
		same(t, "lease", got, &want)

		wantErr(t, "duplicate", ls.Put(ctx, lease(full.ID, at(0))), storage.ErrConflict)
		must(t, "replace sealed", ls.ReplaceSealed(ctx, full.ID, []byte{1, 2, 3}, []byte{4}))
		wantErr(t, "replace stale", ls.ReplaceSealed(ctx, full.ID, []byte{1, 2, 3}, []byte{5}), storage.ErrConflict)
		wantErr(t, "replace missing", ls.ReplaceSealed(ctx, "nope", []byte{1}, []byte{5}), storage.ErrNotFound)
		must(t, "restore sealed", ls.ReplaceSealed(ctx, full.ID, []byte{4}, []byte{1, 2, 3}))
		_, err = ls.Get(ctx, "nope")
		wantErr(t, "get missing", err, storage.ErrNotFound)
		wantErr(t, "extend missing", ls.Extend(ctx, "nope", at(0), at(time.Hour)), storage.ErrNotFound)
		wantErr(t, "extend not active", ls.Extend(ctx, full.ID, full.ExpiresAt, at(time.Hour)), storage.ErrConflict)
		wantErr(t, "set state missing", ls.SetState(ctx, "nope", storage.LeaseRevoked, 1, time.Time{}, ""), storage.ErrNotFound)
	})

	t.Run("ListAndCount", func(t *testing.T) {
		// IDs with LIKE metacharacters and neighbours that share bytes with
		// the prefixes but do not start with them.
		for _, id := range []string{"lp/ro_le/1", "lp/ro_le/2", "lp/ro%le/1", "lp/roXle/1", "lp/role/1", "lp0/x", "lq/x", "lp/ro_lf"} {
			must(t, "put", ls.Put(ctx, lease(id, at(time.Hour))))
		}
		must(t, "set state", ls.SetState(ctx, "lp/ro_le/2", storage.LeaseRevoked, 1, time.Time{}, ""))
		tests := []struct {
			name string
			f    storage.LeaseFilter
			want []string
		}{
			{"prefix with underscore", storage.LeaseFilter{Prefix: "lp/ro_le/"}, []string{"lp/ro_le/1", "lp/ro_le/2"}},
			{"prefix with percent", storage.LeaseFilter{Prefix: "lp/ro%"}, []string{"lp/ro%le/1"}},
			{"mount prefix", storage.LeaseFilter{Prefix: "lp/"}, []string{"lp/ro%le/1", "lp/roXle/1", "lp/ro_le/1", "lp/ro_le/2", "lp/ro_lf", "lp/role/1"}},
			{"state", storage.LeaseFilter{Prefix: "lp/", State: storage.LeaseRevoked}, []string{"lp/ro_le/2"}},
			{"active", storage.LeaseFilter{Prefix: "lp/ro_", State: storage.LeaseActive}, []string{"lp/ro_le/1", "lp/ro_lf"}},
			{"after", storage.LeaseFilter{Prefix: "lp/", After: "lp/ro_lf"}, []string{"lp/role/1"}},
			{"no match", storage.LeaseFilter{Prefix: "zz"}, nil},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				got, _, err := ls.List(ctx, tc.f)
				must(t, "list", err)
				if g := leaseIDs(got); !slices.Equal(g, tc.want) {
					t.Fatalf("got %v, want %v", g, tc.want)
				}
			})
		}
		counts := map[string]int{"lp/ro_le/": 1, "lp/ro_": 2, "lp/": 5, "lp": 6, "l": 7}
		for prefix, want := range counts {
			n, err := ls.CountActive(ctx, prefix)
			must(t, "count", err)
			if n != want {
				t.Errorf("CountActive(%q) = %d, want %d", prefix, n, want)
			}
		}
	})

	t.Run("Pagination", func(t *testing.T) {
		for _, id := range seq("pg/", 7) {
			must(t, "put", ls.Put(ctx, lease(id, at(time.Hour))))
		}
		var all []string
		f := storage.LeaseFilter{Prefix: "pg/", Limit: 3}
		for {
			got, next, err := ls.List(ctx, f)
			must(t, "list", err)
			all = append(all, leaseIDs(got)...)
			if next == "" {
				break
			}
			f.After = next
		}
		if !slices.Equal(all, seq("pg/", 7)) {
			t.Fatalf("paged %v", all)
		}
	})

	t.Run("Extend", func(t *testing.T) {
		must(t, "put", ls.Put(ctx, lease("ext/1", at(time.Hour))))
		// Only from the expiry the caller read: another renewal (or a
		// revocation by request, which ends the lease now) moved it first.
		wantErr(t, "extend from a stale expiry", ls.Extend(ctx, "ext/1", at(2*time.Hour), at(3*time.Hour)), storage.ErrConflict)
		must(t, "extend", ls.Extend(ctx, "ext/1", at(time.Hour), at(3*time.Hour)))
		wantErr(t, "extend again from the old expiry", ls.Extend(ctx, "ext/1", at(time.Hour), at(4*time.Hour)), storage.ErrConflict)
		got, err := ls.Get(ctx, "ext/1")
		must(t, "get", err)
		if !got.ExpiresAt.Equal(norm(at(3 * time.Hour))) {
			t.Fatalf("expires %v", got.ExpiresAt)
		}
	})

	t.Run("ClaimDue", func(t *testing.T) {
		// Times far in the future of every other lease in this store.
		now := at(1000 * time.Hour)
		mk := func(id string, expires, next, claimed time.Time, st storage.LeaseState) {
			l := lease(id, expires)
			l.NextAttemptAt, l.ClaimedUntil, l.State = next, claimed, st
			must(t, "put", ls.Put(ctx, l))
		}
		// Everything else in the store is due as well; revoke it first.
		all, _, err := ls.List(ctx, storage.LeaseFilter{State: storage.LeaseActive, Limit: 1000})
		must(t, "list", err)
		for _, l := range all {
			must(t, "retire", ls.SetState(ctx, l.ID, storage.LeaseRevoked, 0, time.Time{}, ""))
		}
		mk("cd/due-2", now.Add(-time.Minute), time.Time{}, time.Time{}, storage.LeaseActive)
		mk("cd/due-1", now.Add(-time.Hour), time.Time{}, time.Time{}, storage.LeaseActive)
		mk("cd/due-exact", now, time.Time{}, time.Time{}, storage.LeaseActive)
		mk("cd/retry-due", now.Add(-time.Hour), now.Add(-time.Second), time.Time{}, storage.LeaseActive)
		mk("cd/claim-lapsed", now.Add(-time.Hour), time.Time{}, now.Add(-2*time.Second), storage.LeaseActive)
		mk("cd/not-yet", now.Add(time.Hour), time.Time{}, time.Time{}, storage.LeaseActive)
		mk("cd/retry-later", now.Add(-time.Hour), now.Add(time.Minute), time.Time{}, storage.LeaseActive)
		mk("cd/claimed", now.Add(-time.Hour), time.Time{}, now.Add(time.Minute), storage.LeaseActive)
		mk("cd/revoked", now.Add(-time.Hour), time.Time{}, time.Time{}, storage.LeaseRevoked)
		mk("cd/irrevocable", now.Add(-time.Hour), time.Time{}, time.Time{}, storage.LeaseIrrevocable)

		until := now.Add(5 * time.Minute)
		first, err := ls.ClaimDue(ctx, now, until, 3)
		must(t, "claim", err)
		// Earliest due first (expiry, retry time or lapsed claim, whichever
		// is latest); a batch comes back ordered by id.
		if g := leaseIDs(first); !slices.Equal(g, []string{"cd/claim-lapsed", "cd/due-1", "cd/due-2"}) {
			t.Fatalf("first batch %v", g)
		}
		for _, l := range first {
			if !l.ClaimedUntil.Equal(norm(until)) {
				t.Fatalf("%s claimed until %v, want %v", l.ID, l.ClaimedUntil, norm(until))
			}
		}
		second, err := ls.ClaimDue(ctx, now, until, 10)
		must(t, "claim", err)
		if g := leaseIDs(second); !slices.Equal(g, []string{"cd/due-exact", "cd/retry-due"}) {
			t.Fatalf("second batch %v", g)
		}
		third, err := ls.ClaimDue(ctx, now, until, 10)
		must(t, "claim", err)
		if len(third) != 0 {
			t.Fatalf("claimed again: %v", leaseIDs(third))
		}
		// A failed attempt releases the claim; the lease is due again at
		// its next attempt time.
		must(t, "set state", ls.SetState(ctx, "cd/due-1", storage.LeaseActive, 1, now.Add(time.Minute), "boom"))
		got, err := ls.Get(ctx, "cd/due-1")
		must(t, "get", err)
		if !got.ClaimedUntil.IsZero() || got.Attempts != 1 || got.LastError != "boom" || !got.NextAttemptAt.Equal(norm(now.Add(time.Minute))) {
			t.Fatalf("after set state: %+v", got)
		}
		later, err := ls.ClaimDue(ctx, now.Add(time.Minute), now.Add(10*time.Minute), 10)
		must(t, "claim later", err)
		if g := leaseIDs(later); !slices.Equal(g, []string{"cd/claimed", "cd/due-1", "cd/retry-later"}) {
			t.Fatalf("later batch %v", g)
		}
		none, err := ls.ClaimDue(ctx, now, until, 0)
		must(t, "claim 0", err)
		if len(none) != 0 {
			t.Fatalf("limit 0 claimed %d", len(none))
		}

		// A lone node restarting after a crash drops the dead run's claims:
		// every lease claimed above is due again at once.
		claimedNow, err := ls.ClaimDue(ctx, now.Add(time.Minute), now.Add(time.Hour), 10)
		must(t, "claim before release", err)
		if len(claimedNow) != 0 {
			t.Fatalf("nothing should be claimable before the release, got %v", leaseIDs(claimedNow))
		}
		released, err := ls.ReleaseClaims(ctx)
		must(t, "release claims", err)
		if released < 3 {
			t.Fatalf("released %d claims, want at least 3", released)
		}
		again, err := ls.ClaimDue(ctx, now.Add(time.Minute), now.Add(time.Hour), 10)
		must(t, "claim after release", err)
		if len(again) < 3 {
			t.Fatalf("after release only %v are due again", leaseIDs(again))
		}
	})

	t.Run("Pending", func(t *testing.T) {
		// Far beyond every other subtest's times.
		now := at(5000 * time.Hour)
		retireAll(t, ls)
		for _, l := range []*storage.Lease{lease("pd/a/1", now.Add(-time.Hour)), lease("pd/a/2", now.Add(-time.Minute)), lease("pd/a/3", now.Add(time.Minute))} {
			l.State = storage.LeasePending
			must(t, "put pending", ls.Put(ctx, l))
		}
		must(t, "put active", ls.Put(ctx, lease("pd/a/0", now.Add(-2*time.Hour))))
		n, err := ls.CountActive(ctx, "pd/")
		must(t, "count", err)
		if n != 4 {
			t.Fatalf("CountActive = %d, want 4 (pending leases are open)", n)
		}
		pend, _, err := ls.List(ctx, storage.LeaseFilter{Prefix: "pd/", State: storage.LeasePending})
		must(t, "list pending", err)
		if g := leaseIDs(pend); !slices.Equal(g, []string{"pd/a/1", "pd/a/2", "pd/a/3"}) {
			t.Fatalf("pending list %v", g)
		}
		// Activation: only from pending, never while claimed.
		wantErr(t, "activate active", ls.Activate(ctx, "pd/a/0", now.Add(time.Hour)), storage.ErrConflict)
		wantErr(t, "activate missing", ls.Activate(ctx, "nope", now), storage.ErrNotFound)
		must(t, "activate", ls.Activate(ctx, "pd/a/3", now.Add(time.Hour)))
		got, err := ls.Get(ctx, "pd/a/3")
		must(t, "get", err)
		if got.State != storage.LeaseActive || !got.ExpiresAt.Equal(norm(now.Add(time.Hour))) {
			t.Fatalf("activated lease %s expires %v", got.State, got.ExpiresAt)
		}
		// Due pending leases are claimed before an active lease due earlier.
		first, err := ls.ClaimDue(ctx, now, now.Add(time.Hour), 2)
		must(t, "claim", err)
		if g := leaseIDs(first); !slices.Equal(g, []string{"pd/a/1", "pd/a/2"}) {
			t.Fatalf("first claim %v, want the pending leases", g)
		}
		wantErr(t, "activate claimed", ls.Activate(ctx, "pd/a/1", now.Add(time.Hour)), storage.ErrConflict)
		// A failed attempt keeps a pending lease pending and due again later.
		must(t, "retry", ls.SetState(ctx, "pd/a/2", storage.LeasePending, 1, now.Add(time.Minute), "boom"))
		got, err = ls.Get(ctx, "pd/a/2")
		must(t, "get", err)
		if got.State != storage.LeasePending || !got.ClaimedUntil.IsZero() || got.Attempts != 1 {
			t.Fatalf("after retry: %+v", got)
		}
		second, err := ls.ClaimDue(ctx, now, now.Add(time.Hour), 10)
		must(t, "claim", err)
		if g := leaseIDs(second); !slices.Equal(g, []string{"pd/a/0"}) {
			t.Fatalf("second claim %v", g)
		}
		third, err := ls.ClaimDue(ctx, now.Add(time.Minute), now.Add(2*time.Minute), 10)
		must(t, "claim", err)
		if g := leaseIDs(third); !slices.Equal(g, []string{"pd/a/2"}) {
			t.Fatalf("third claim %v", g)
		}
		released, err := ls.ReleaseClaims(ctx)
		must(t, "release", err)
		if released < 3 {
			t.Fatalf("released %d claims", released)
		}
		for _, id := range []string{"pd/a/0", "pd/a/1", "pd/a/2"} {
			must(t, "close", ls.SetState(ctx, id, storage.LeaseRevoked, 1, time.Time{}, ""))
		}
		// A revocation by request ends the lease and holds it off the
		// worker until its claim lapses.
		must(t, "start revoke", ls.StartRevoke(ctx, "pd/a/3", now, now.Add(time.Minute)))
		wantErr(t, "start revoke twice", ls.StartRevoke(ctx, "pd/a/3", now, now.Add(time.Minute)), storage.ErrConflict)
		got, err = ls.Get(ctx, "pd/a/3")
		must(t, "get", err)
		if !got.ExpiresAt.Equal(norm(now)) || !got.ClaimedUntil.Equal(norm(now.Add(time.Minute))) {
			t.Fatalf("after start revoke: expires %v claimed %v", got.ExpiresAt, got.ClaimedUntil)
		}
		if c, err := ls.ClaimDue(ctx, now.Add(time.Second), now.Add(time.Hour), 10); err != nil || len(c) != 0 {
			t.Fatalf("claimed a lease being revoked by request: %v %v", leaseIDs(c), err)
		}
		if c, err := ls.ClaimDue(ctx, now.Add(2*time.Minute), now.Add(time.Hour), 10); err != nil || !slices.Equal(leaseIDs(c), []string{"pd/a/3"}) {
			t.Fatalf("a lapsed revocation by request is not due: %v %v", leaseIDs(c), err)
		}
		must(t, "close", ls.SetState(ctx, "pd/a/3", storage.LeaseRevoked, 1, time.Time{}, ""))
		wantErr(t, "start revoke closed", ls.StartRevoke(ctx, "pd/a/3", now, now.Add(time.Minute)), storage.ErrConflict)
	})
}

// retireAll revokes every active lease in s, so a subtest's claims see only
// its own leases.
func retireAll(t *testing.T, ls storage.Leases) {
	t.Helper()
	for {
		all, _, err := ls.List(t.Context(), storage.LeaseFilter{State: storage.LeaseActive, Limit: 1000})
		must(t, "list", err)
		if len(all) == 0 {
			return
		}
		for _, l := range all {
			must(t, "retire", ls.SetState(t.Context(), l.ID, storage.LeaseRevoked, 0, time.Time{}, ""))
		}
	}
}

// testLeaseOutcomes covers what the expiry worker relies on beyond ClaimDue:
// batched outcomes guarded by the claim, an Extend that keeps a claim, ties
// broken by id, and pruning of revoked leases.
func testLeaseOutcomes(t *testing.T, s storage.Store) {
	ctx := t.Context()
	ls := s.Leases()
	now := at(2000 * time.Hour)
	claim := func(t *testing.T, at time.Time, until time.Time, n int) []string {
		t.Helper()
		got, err := ls.ClaimDue(ctx, at, until, n)
		must(t, "claim", err)
		return leaseIDs(got)
	}

	t.Run("TiesByID", func(t *testing.T) {
		retireAll(t, ls)
		for _, id := range []string{"tie/c", "tie/a", "tie/d", "tie/b"} {
			must(t, "put", ls.Put(ctx, lease(id, now.Add(-time.Hour))))
		}
		// Leases due in one second are claimed in the order of the
		// backend's due index: by id on PostgreSQL, in the order their
		// rows were stored on SQLite (its index is keyed by the due
		// second, so a batch shares table pages).
		first, rest := []string{"tie/a", "tie/b"}, []string{"tie/c", "tie/d"}
		if s.Backend() == "sqlite" {
			first, rest = []string{"tie/a", "tie/c"}, []string{"tie/b", "tie/d"}
		}
		if g := claim(t, now, now.Add(time.Minute), 2); !slices.Equal(g, first) {
			t.Fatalf("first of a tie: %v, want %v", g, first)
		}
		if g := claim(t, now, now.Add(time.Minute), 10); !slices.Equal(g, rest) {
			t.Fatalf("rest of a tie: %v, want %v", g, rest)
		}
	})

	t.Run("CurrentSecond", func(t *testing.T) {
		// Within the second being claimed in, exactly the leases due by
		// now: never one before its due time.
		retireAll(t, ls)
		sec := now.Add(time.Hour).Truncate(time.Second)
		mid := sec.Add(500 * time.Millisecond)
		must(t, "put", ls.Put(ctx, lease("cs/prev", sec.Add(-200*time.Millisecond))))
		must(t, "put", ls.Put(ctx, lease("cs/late", mid.Add(300*time.Millisecond))))
		must(t, "put", ls.Put(ctx, lease("cs/early", mid.Add(-300*time.Millisecond))))
		must(t, "put", ls.Put(ctx, lease("cs/exact", mid)))
		if g := claim(t, mid, mid.Add(time.Hour), 10); !slices.Equal(g, []string{"cs/early", "cs/exact", "cs/prev"}) {
			t.Fatalf("claimed %v at the middle of the second", g)
		}
		if g := claim(t, mid.Add(299*time.Millisecond), mid.Add(time.Hour), 10); len(g) != 0 {
			t.Fatalf("claimed %v before their due time", g)
		}
		if g := claim(t, mid.Add(300*time.Millisecond), mid.Add(time.Hour), 10); !slices.Equal(g, []string{"cs/late"}) {
			t.Fatalf("claimed %v at cs/late's due time", g)
		}
	})

	t.Run("CurrentSecondBurst", func(t *testing.T) {
		// A lease due now, stored after thousands due later in the same
		// second: claimed at the latest once the second has passed, and
		// none of the others early.
		retireAll(t, ls)
		sec := now.Add(2 * time.Hour).Truncate(time.Second)
		const burst = 20_100 // beyond what one SQLite claim reads of the current second
		err := s.InTx(ctx, func(tx storage.Repos) error {
			for i := range burst {
				if err := tx.Leases().Put(ctx, lease(fmt.Sprintf("cb/later/%04d", i), sec.Add(900*time.Millisecond))); err != nil {
					return err
				}
			}
			return tx.Leases().Put(ctx, lease("cb/due", sec.Add(100*time.Millisecond)))
		})
		must(t, "put burst", err)
		early := claim(t, sec.Add(500*time.Millisecond), sec.Add(time.Hour), burst+10)
		if len(early) > 1 || (len(early) == 1 && early[0] != "cb/due") {
			t.Fatalf("claimed %d leases in the middle of the second (first %v), want at most cb/due", len(early), early[:min(3, len(early))])
		}
		rest := claim(t, sec.Add(time.Second), sec.Add(time.Hour), burst+10)
		if got := len(early) + len(rest); got != burst+1 || (len(early) == 0 && !slices.Contains(rest, "cb/due")) {
			t.Fatalf("claimed %d+%d leases once the second passed, want %d in all with cb/due", len(early), len(rest), burst+1)
		}
	})

	t.Run("ExtendRefusedWhileClaimed", func(t *testing.T) {
		retireAll(t, ls)
		must(t, "put", ls.Put(ctx, lease("xk/1", now.Add(-time.Hour))))
		must(t, "put", ls.Put(ctx, lease("xk/2", now.Add(time.Hour))))
		if g := claim(t, now, now.Add(5*time.Minute), 10); !slices.Equal(g, []string{"xk/1"}) {
			t.Fatalf("claimed %v", g)
		}
		// A claimed lease is being revoked: a renewal must not be granted
		// beside it, whatever the new expiry.
		wantErr(t, "extend claimed", ls.Extend(ctx, "xk/1", now.Add(-time.Hour), now.Add(time.Hour)), storage.ErrConflict)
		got, err := ls.Get(ctx, "xk/1")
		must(t, "get", err)
		if !got.ExpiresAt.Equal(norm(now.Add(-time.Hour))) {
			t.Fatalf("a refused extend moved the expiry to %v", got.ExpiresAt)
		}
		// Nor one that a revocation by request has claimed.
		must(t, "start revoke", ls.StartRevoke(ctx, "xk/2", now, now.Add(5*time.Minute)))
		wantErr(t, "extend while revoked by request", ls.Extend(ctx, "xk/2", now, now.Add(2*time.Hour)), storage.ErrConflict)
		// Once the outcome is written (the revocation failed, a retry is
		// due) the claim is gone and the lease may be extended again; it is
		// due at the later of the new expiry and the next attempt.
		must(t, "outcome", ls.SetState(ctx, "xk/1", storage.LeaseActive, 1, now.Add(30*time.Minute), "refused"))
		must(t, "extend released", ls.Extend(ctx, "xk/1", now.Add(-time.Hour), now.Add(time.Minute)))
		if g := claim(t, now.Add(2*time.Minute), now.Add(3*time.Minute), 10); len(g) != 0 {
			t.Fatalf("claimed before the next attempt: %v", g)
		}
		if g := claim(t, now.Add(30*time.Minute), now.Add(40*time.Minute), 10); !slices.Equal(g, []string{"xk/1", "xk/2"}) {
			t.Fatalf("at the next attempt (and after xk/2's claim lapsed): %v", g)
		}
	})

	t.Run("SetStateKeepsClosed", func(t *testing.T) {
		retireAll(t, ls)
		must(t, "put", ls.Put(ctx, lease("sk/revoked", now.Add(-time.Hour))))
		must(t, "put", ls.Put(ctx, lease("sk/irrevocable", now.Add(-time.Hour))))
		must(t, "revoke", ls.SetState(ctx, "sk/revoked", storage.LeaseRevoked, 1, time.Time{}, ""))
		must(t, "give up", ls.SetState(ctx, "sk/irrevocable", storage.LeaseIrrevocable, 3, time.Time{}, "refused"))
		// A late outcome written without a claim (a failed revocation by
		// request that the worker overtook) must not undo them.
		wantErr(t, "reopen revoked", ls.SetState(ctx, "sk/revoked", storage.LeaseActive, 2, now.Add(time.Minute), "late failure"), storage.ErrConflict)
		wantErr(t, "revoked to irrevocable", ls.SetState(ctx, "sk/revoked", storage.LeaseIrrevocable, 3, time.Time{}, "late failure"), storage.ErrConflict)
		wantErr(t, "reopen irrevocable", ls.SetState(ctx, "sk/irrevocable", storage.LeaseActive, 4, now.Add(time.Minute), "late failure"), storage.ErrConflict)
		for id, want := range map[string]storage.LeaseState{"sk/revoked": storage.LeaseRevoked, "sk/irrevocable": storage.LeaseIrrevocable} {
			got, err := ls.Get(ctx, id)
			must(t, "get", err)
			if got.State != want {
				t.Fatalf("%s is %s after a refused late outcome, want %s", id, got.State, want)
			}
		}
		// A revocation that succeeds later still closes an irrevocable lease.
		must(t, "revoke irrevocable", ls.SetState(ctx, "sk/irrevocable", storage.LeaseRevoked, 4, time.Time{}, ""))
		wantErr(t, "missing", ls.SetState(ctx, "sk/nope", storage.LeaseActive, 1, time.Time{}, ""), storage.ErrNotFound)
	})

	t.Run("SetStates", func(t *testing.T) {
		retireAll(t, ls)
		for _, id := range []string{"ss/ok", "ss/retry", "ss/release", "ss/stolen", "ss/gone", "ss/free"} {
			must(t, "put", ls.Put(ctx, lease(id, now.Add(-time.Hour))))
		}
		mine := now.Add(5 * time.Minute)
		if g := claim(t, now, mine, 10); len(g) != 6 {
			t.Fatalf("claimed %v", g)
		}
		// Another node took ss/stolen over after the claim lapsed; ss/gone
		// was revoked by request meanwhile.
		theirs := now.Add(20 * time.Minute)
		if g := claim(t, mine, theirs, 10); len(g) != 6 {
			t.Fatalf("takeover claimed %v", g)
		}
		must(t, "revoke by request", ls.SetState(ctx, "ss/gone", storage.LeaseRevoked, 0, time.Time{}, ""))
		out := []storage.LeaseOutcome{
			{ID: "ss/ok", State: storage.LeaseRevoked, Attempts: 1, Claim: theirs},
			{ID: "ss/retry", State: storage.LeaseActive, Attempts: 2, NextAttempt: now.Add(time.Hour), LastError: "refused", Claim: theirs},
			{ID: "ss/release", State: storage.LeaseActive, Claim: theirs},
			{ID: "ss/stolen", State: storage.LeaseRevoked, Attempts: 1, Claim: mine},
			{ID: "ss/gone", State: storage.LeaseIrrevocable, Attempts: 9, Claim: theirs},
			{ID: "ss/free", State: storage.LeaseIrrevocable, Attempts: 8, LastError: "gave up"},
			{ID: "ss/absent", State: storage.LeaseRevoked},
		}
		got, err := ls.SetStates(ctx, out)
		must(t, "set states", err)
		if want := []bool{true, true, true, false, false, true, false}; !slices.Equal(got, want) {
			t.Fatalf("recorded %v, want %v", got, want)
		}
		state := func(id string) *storage.Lease {
			t.Helper()
			l, err := ls.Get(ctx, id)
			must(t, "get "+id, err)
			return l
		}
		if l := state("ss/ok"); l.State != storage.LeaseRevoked || l.Attempts != 1 || !l.ClaimedUntil.IsZero() {
			t.Fatalf("ss/ok: %+v", l)
		}
		if l := state("ss/retry"); l.State != storage.LeaseActive || l.Attempts != 2 || l.LastError != "refused" ||
			!l.NextAttemptAt.Equal(norm(now.Add(time.Hour))) || !l.ClaimedUntil.IsZero() {
			t.Fatalf("ss/retry: %+v", l)
		}
		if l := state("ss/stolen"); l.State != storage.LeaseActive || !l.ClaimedUntil.Equal(norm(theirs)) {
			t.Fatalf("ss/stolen changed under a lapsed claim: %+v", l)
		}
		if l := state("ss/gone"); l.State != storage.LeaseRevoked {
			t.Fatalf("ss/gone: %+v", l)
		}
		if l := state("ss/free"); l.State != storage.LeaseIrrevocable || l.Attempts != 8 || l.LastError != "gave up" {
			t.Fatalf("ss/free: %+v", l)
		}
		// The released lease is due at once (at its expiry), the retried one
		// at its next attempt, the stolen one when the other claim ends.
		if g := claim(t, theirs.Add(-time.Minute), now.Add(10*time.Hour), 10); !slices.Equal(g, []string{"ss/release"}) {
			t.Fatalf("due after the outcomes: %v", g)
		}
		if g := claim(t, theirs, now.Add(10*time.Hour), 10); !slices.Equal(g, []string{"ss/stolen"}) {
			t.Fatalf("due when the takeover claim ends: %v", g)
		}
		if g := claim(t, now.Add(time.Hour), now.Add(2*time.Hour), 10); !slices.Equal(g, []string{"ss/retry"}) {
			t.Fatalf("due at the retry: %v", g)
		}
		none, err := ls.SetStates(ctx, nil)
		must(t, "set no states", err)
		if len(none) != 0 {
			t.Fatalf("empty batch: %v", none)
		}
	})

	t.Run("PruneRevoked", func(t *testing.T) {
		retireAll(t, ls)
		// Start from a store holding no revoked lease.
		for {
			n, err := ls.PruneRevoked(ctx, time.Now().Add(time.Hour), 1000)
			must(t, "prune all", err)
			if n == 0 {
				break
			}
		}
		for _, id := range seq("pr/rev", 5) {
			must(t, "put", ls.Put(ctx, lease(id, now)))
			must(t, "revoke", ls.SetState(ctx, id, storage.LeaseRevoked, 1, time.Time{}, ""))
		}
		for _, id := range []string{"pr/irrevocable", "pr/active"} {
			must(t, "put", ls.Put(ctx, lease(id, now)))
		}
		must(t, "irrevocable", ls.SetState(ctx, "pr/irrevocable", storage.LeaseIrrevocable, 8, time.Time{}, "x"))
		n, err := ls.PruneRevoked(ctx, time.Now().Add(-time.Hour), 100)
		must(t, "prune recent", err)
		if n != 0 {
			t.Fatalf("pruned %d leases revoked after the cutoff", n)
		}
		n, err = ls.PruneRevoked(ctx, time.Now().Add(time.Hour), 0)
		must(t, "prune none", err)
		if n != 0 {
			t.Fatalf("limit 0 pruned %d", n)
		}
		total := 0
		for _, limit := range []int{2, 2, 2, 2} {
			n, err := ls.PruneRevoked(ctx, time.Now().Add(time.Hour), limit)
			must(t, "prune", err)
			if n > limit {
				t.Fatalf("pruned %d, limit %d", n, limit)
			}
			total += n
		}
		if total != 5 {
			t.Fatalf("pruned %d revoked leases, want 5", total)
		}
		left, _, err := ls.List(ctx, storage.LeaseFilter{Prefix: "pr/"})
		must(t, "list", err)
		if g := leaseIDs(left); !slices.Equal(g, []string{"pr/active", "pr/irrevocable"}) {
			t.Fatalf("left after pruning: %v", g)
		}
	})
}

// testClaimDueExclusive has many claimers race over one due set: every lease
// is claimed exactly once.
func testClaimDueExclusive(t *testing.T, s storage.Store) {
	ctx := t.Context()
	const leases, claimers, batch = 300, 8, 7
	must(t, "seed", s.InTx(ctx, func(tx storage.Repos) error {
		for i := range leases {
			if err := tx.Leases().Put(ctx, lease(fmt.Sprintf("ex/%04d", i), at(time.Duration(i%17)*time.Second))); err != nil {
				return err
			}
		}
		return nil
	}))
	now, until := at(time.Hour), at(2*time.Hour)
	var mu sync.Mutex
	claimedBy := map[string]int{}
	var wg sync.WaitGroup
	for w := range claimers {
		wg.Go(func() {
			for {
				got, err := s.Leases().ClaimDue(ctx, now, until, batch)
				if err != nil {
					t.Errorf("claimer %d: %v", w, err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, l := range got {
					claimedBy[l.ID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(claimedBy) != leases {
		t.Fatalf("%d distinct leases claimed, want %d", len(claimedBy), leases)
	}
	for id, n := range claimedBy {
		if n != 1 {
			t.Fatalf("lease %s claimed %d times", id, n)
		}
	}
}

// testConcurrentWriters has goroutines write at once; all writes land.
func testConcurrentWriters(t *testing.T, s storage.Store) {
	ctx := t.Context()
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				serial := fmt.Sprintf("%02x%04x", w, i)
				c := cert(serial, "iss", at(time.Hour), serial+".example")
				if err := s.Certificates().Put(ctx, c); err != nil {
					t.Errorf("writer %d put %d: %v", w, i, err)
					return
				}
				l := lease(fmt.Sprintf("cw/%d/%d", w, i), at(time.Hour))
				if err := s.Leases().Put(ctx, l); err != nil {
					t.Errorf("writer %d lease %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	n := 0
	f := storage.CertFilter{Limit: 1000}
	for {
		got, next, err := s.Certificates().List(ctx, f)
		must(t, "list", err)
		n += len(got)
		if next == "" {
			break
		}
		f.After = next
	}
	if n != writers*each {
		t.Fatalf("%d certificates, want %d", n, writers*each)
	}
	active, err := s.Leases().CountActive(ctx, "cw/")
	must(t, "count", err)
	if active != writers*each {
		t.Fatalf("%d leases, want %d", active, writers*each)
	}
}

// testTransactions checks commit, rollback on error and rollback on panic.
func testTransactions(t *testing.T, s storage.Store) {
	ctx := t.Context()
	errBoom := errors.New("boom")

	t.Run("Commit", func(t *testing.T) {
		must(t, "tx", s.InTx(ctx, func(tx storage.Repos) error {
			if err := tx.Certificates().Put(ctx, cert("tx-commit", "iss", at(time.Hour), "commit.example")); err != nil {
				return err
			}
			// The transaction sees its own writes.
			if _, err := tx.Certificates().Get(ctx, "tx-commit"); err != nil {
				return err
			}
			return tx.Settings().Put(ctx, "tx-commit", []byte("1"))
		}))
		_, err := s.Certificates().Get(ctx, "tx-commit")
		must(t, "get committed", err)
		got, _, err := s.Certificates().List(ctx, storage.CertFilter{Name: "commit.example"})
		must(t, "list committed", err)
		if len(got) != 1 {
			t.Fatalf("names not committed with the certificate")
		}
	})

	t.Run("RollbackOnError", func(t *testing.T) {
		err := s.InTx(ctx, func(tx storage.Repos) error {
			if err := tx.Certificates().Put(ctx, cert("tx-rollback", "iss", at(time.Hour))); err != nil {
				return err
			}
			if err := tx.Leases().Put(ctx, lease("tx/rollback", at(0))); err != nil {
				return err
			}
			return errBoom
		})
		wantErr(t, "tx", err, errBoom)
		_, err = s.Certificates().Get(ctx, "tx-rollback")
		wantErr(t, "get rolled back", err, storage.ErrNotFound)
		_, err = s.Leases().Get(ctx, "tx/rollback")
		wantErr(t, "get rolled back lease", err, storage.ErrNotFound)
	})

	t.Run("RollbackOnPanic", func(t *testing.T) {
		func() {
			defer func() {
				if r := recover(); r != errBoom {
					t.Fatalf("recovered %v, want the original panic", r)
				}
			}()
			_ = s.InTx(ctx, func(tx storage.Repos) error {
				if err := tx.Certificates().Put(ctx, cert("tx-panic", "iss", at(time.Hour))); err != nil {
					return err
				}
				panic(errBoom)
			})
		}()
		_, err := s.Certificates().Get(ctx, "tx-panic")
		wantErr(t, "get after panic", err, storage.ErrNotFound)
		// The store is still usable.
		must(t, "put after panic", s.Certificates().Put(ctx, cert("tx-panic", "iss", at(time.Hour))))
	})

	t.Run("ConflictRollsBackPut", func(t *testing.T) {
		must(t, "put", s.Certificates().Put(ctx, cert("tx-dup", "iss", at(time.Hour), "dup-a.example")))
		// A conflicting Put must not leave its names behind.
		wantErr(t, "dup", s.Certificates().Put(ctx, cert("tx-dup", "iss", at(time.Hour), "dup-b.example")), storage.ErrConflict)
		got, _, err := s.Certificates().List(ctx, storage.CertFilter{Name: "dup-b.example"})
		must(t, "list", err)
		if len(got) != 0 {
			t.Fatalf("names of a conflicting put were stored")
		}
	})
}
