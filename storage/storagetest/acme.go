package storagetest

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// testACME covers the ACME repository: object round trips, the unique
// lookup key, optimistic updates, filters, pruning and single-use nonces.
func testACME(t *testing.T, s storage.Store) {
	ctx := t.Context()
	a := s.ACME()
	acct := &storage.ACMEObject{Kind: "account", ID: "a1", Provisioner: "p", LookupKey: "thumb1",
		Status: "valid", Data: []byte(`{"x":1}`), CreatedAt: at(0)}
	must(t, "put account", a.Put(ctx, acct))
	same(t, "version after put", acct.Version, int64(1))
	wantErr(t, "put same id", a.Put(ctx, &storage.ACMEObject{Kind: "account", ID: "a1", Provisioner: "p"}), storage.ErrConflict)
	wantErr(t, "put same lookup key", a.Put(ctx, &storage.ACMEObject{Kind: "account", ID: "a2", Provisioner: "p", LookupKey: "thumb1"}), storage.ErrConflict)
	// The same key on another provisioner, and objects without a key, coexist.
	must(t, "put other provisioner", a.Put(ctx, &storage.ACMEObject{Kind: "account", ID: "a3", Provisioner: "q", LookupKey: "thumb1"}))
	must(t, "put no key 1", a.Put(ctx, &storage.ACMEObject{Kind: "account", ID: "a4", Provisioner: "p"}))
	must(t, "put no key 2", a.Put(ctx, &storage.ACMEObject{Kind: "account", ID: "a5", Provisioner: "p"}))

	got, err := a.Get(ctx, "account", "a1")
	must(t, "get", err)
	same(t, "round trip", got, &storage.ACMEObject{Kind: "account", ID: "a1", Provisioner: "p", LookupKey: "thumb1",
		Status: "valid", Version: 1, Data: []byte(`{"x":1}`), CreatedAt: at(0).UTC().Truncate(time.Microsecond)})
	got, err = a.GetByLookupKey(ctx, "account", "p", "thumb1")
	must(t, "get by key", err)
	same(t, "get by key id", got.ID, "a1")
	_, err = a.GetByLookupKey(ctx, "account", "p", "nope")
	wantErr(t, "get by absent key", err, storage.ErrNotFound)
	_, err = a.Get(ctx, "order", "a1")
	wantErr(t, "get other kind", err, storage.ErrNotFound)

	// Optimistic update.
	stale := *got
	got.Status, got.LookupKey, got.Data, got.ExpiresAt = "deactivated", "thumb2", []byte("y"), at(time.Hour)
	must(t, "update", a.Update(ctx, got))
	same(t, "version after update", got.Version, int64(2))
	wantErr(t, "stale update", a.Update(ctx, &stale), storage.ErrConflict)
	wantErr(t, "update absent", a.Update(ctx, &storage.ACMEObject{Kind: "account", ID: "zz", Version: 1}), storage.ErrNotFound)
	again, err := a.Get(ctx, "account", "a1")
	must(t, "get updated", err)
	same(t, "updated", []any{again.Status, again.LookupKey, string(again.Data), again.ExpiresAt.Equal(at(time.Hour).Truncate(time.Microsecond)), again.Version},
		[]any{"deactivated", "thumb2", "y", true, int64(2)})
	a4, err := a.Get(ctx, "account", "a4")
	must(t, "get a4", err)
	a4.LookupKey = "thumb2"
	wantErr(t, "update onto a taken key", a.Update(ctx, a4), storage.ErrConflict)
	// Update moves the ref and clears or sets a lookup key too (the usual
	// update of status, expiry and data leaves both columns alone), and a
	// stale version is refused whichever way.
	again.LookupKey, again.Ref, again.Status = "", "r2", "valid"
	must(t, "update clearing the key, new ref", a.Update(ctx, again))
	_, err = a.GetByLookupKey(ctx, "account", "p", "thumb2")
	wantErr(t, "get by a cleared key", err, storage.ErrNotFound)
	again.Status, again.Data = "deactivated", []byte("z")
	must(t, "status update", a.Update(ctx, again))
	wantErr(t, "stale status update", a.Update(ctx, got), storage.ErrConflict)
	again.LookupKey = "thumb3"
	must(t, "update setting a key", a.Update(ctx, again))
	again.Status, again.Ref = "valid", "r3"
	must(t, "update of the ref alone", a.Update(ctx, again))
	final, err := a.Get(ctx, "account", "a1")
	must(t, "get after updates", err)
	same(t, "after updates", []any{final.LookupKey, final.Ref, final.Status, string(final.Data), final.Version},
		[]any{"thumb3", "r3", "valid", "z", int64(6)})
	if byKey, err := a.GetByLookupKey(ctx, "account", "p", "thumb3"); err != nil || byKey.ID != "a1" {
		t.Fatalf("get by the new key: %v %+v", err, byKey)
	}

	// Filters and pagination.
	for i := range 5 {
		must(t, "put authz", a.Put(ctx, &storage.ACMEObject{Kind: "authz", ID: fmt.Sprintf("z%d", i), Provisioner: "p",
			AccountID: []string{"a1", "a4"}[i%2], Ref: "dns:x.test", Status: []string{"valid", "pending"}[i/3],
			ExpiresAt: at(time.Duration(i) * time.Hour)}))
	}
	list, err := a.List(ctx, storage.ACMEFilter{Kind: "authz", AccountID: "a1", Ref: "dns:x.test", Status: "valid"})
	must(t, "list", err)
	ids := func(l []*storage.ACMEObject) (out []string) {
		for _, o := range l {
			out = append(out, o.ID)
		}
		return out
	}
	same(t, "filtered", ids(list), []string{"z0", "z2"})
	list, err = a.List(ctx, storage.ACMEFilter{Kind: "authz", After: "z1", Limit: 2})
	must(t, "page", err)
	same(t, "page", ids(list), []string{"z2", "z3"})

	// Counting the unexpired: z0 expires at at(0), so only z2 is left.
	n, first, err := a.CountUnexpired(ctx, storage.ACMEFilter{Kind: "authz", AccountID: "a1", Status: "valid"}, at(0))
	must(t, "count", err)
	same(t, "count", []any{n, first.Equal(at(2 * time.Hour).Truncate(time.Microsecond))}, []any{1, true})
	n, first, err = a.CountUnexpired(ctx, storage.ACMEFilter{Kind: "authz", AccountID: "a4"}, at(-time.Hour))
	must(t, "count any status", err)
	same(t, "count any status", []any{n, first.Equal(at(time.Hour).Truncate(time.Microsecond))}, []any{2, true})
	n, first, err = a.CountUnexpired(ctx, storage.ACMEFilter{Kind: "authz", AccountID: "a1", Status: "deactivated"}, at(0))
	must(t, "count none", err)
	same(t, "count none", []any{n, first.IsZero()}, []any{0, true})
	if _, _, err := a.CountUnexpired(ctx, storage.ACMEFilter{}, at(0)); err == nil {
		t.Fatal("count without a kind: no error")
	}

	n, err = a.PruneExpired(ctx, "authz", at(150*time.Minute), 1)
	must(t, "prune 1", err)
	same(t, "pruned 1", n, 1)
	n, err = a.PruneExpired(ctx, "authz", at(150*time.Minute), 10)
	must(t, "prune rest", err)
	same(t, "pruned rest", n, 2)
	list, err = a.List(ctx, storage.ACMEFilter{Kind: "authz"})
	must(t, "list after prune", err)
	same(t, "after prune", ids(list), []string{"z3", "z4"})
	n, err = a.PruneExpired(ctx, "account", at(1000*time.Hour), 10)
	must(t, "prune accounts", err)
	same(t, "accounts without expiry stay", n, 1) // only a1 has an expiry

	// Used nonces: recorded once, exactly one of concurrent recorders
	// wins, pruned once expired.
	must(t, "put nonce", a.PutNonce(ctx, "n1", at(time.Hour)))
	wantErr(t, "put nonce twice", a.PutNonce(ctx, "n1", at(time.Hour)), storage.ErrConflict)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			switch err := a.PutNonce(ctx, "n2", at(time.Hour)); {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, storage.ErrConflict):
				t.Errorf("concurrent put nonce: %v", err)
			}
		})
	}
	wg.Wait()
	same(t, "concurrent recorders that won", wins.Load(), int32(1))
	for i := range 3 {
		must(t, "put old nonce", a.PutNonce(ctx, fmt.Sprintf("old%d", i), at(-time.Hour)))
	}
	must(t, "put fresh", a.PutNonce(ctx, "fresh", at(time.Hour)))
	n, err = a.PruneNonces(ctx, at(0), 10)
	must(t, "prune nonces", err)
	same(t, "pruned nonces", n, 3)
	wantErr(t, "fresh survives", a.PutNonce(ctx, "fresh", at(time.Hour)), storage.ErrConflict)
	must(t, "a pruned nonce is gone", a.PutNonce(ctx, "old0", at(time.Hour)))
}
