package storagetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// testCRLs: the stored CRL of a shard only moves to higher numbers,
// revocations (Touch) make it stale until a CRL built from them is stored,
// and a number allocated from the issuer and stored in one transaction
// cannot be overtaken by a concurrent writer.
func testCRLs(t *testing.T, s storage.Store) {
	ctx := t.Context()
	cs := s.CRLs()
	must(t, "issuer", s.Issuers().Put(ctx, &storage.Issuer{ID: "crl-int", Kind: "intermediate", KeyName: "k", DER: []byte{0x30, 3}, Active: true}))

	_, err := cs.Head(ctx, "crl-int", 0)
	wantErr(t, "head of a shard without CRL", err, storage.ErrNotFound)
	_, err = cs.Get(ctx, "crl-int", 0)
	wantErr(t, "get of a shard without CRL", err, storage.ErrNotFound)

	// A revocation before any CRL: a row that only counts it.
	must(t, "touch", cs.Touch(ctx, "crl-int", 1))
	h, err := cs.Head(ctx, "crl-int", 1)
	must(t, "head after touch", err)
	if h.Number != 0 || h.Revision != 1 || h.Built != 0 || !h.Stale() || h.DER != nil {
		t.Fatalf("touched row %+v", h)
	}

	c := &storage.CRL{IssuerID: "crl-int", Shard: 1, Number: 5, ThisUpdate: at(0), NextUpdate: at(24 * time.Hour),
		DER: []byte("crl-5"), Fingerprint: []byte("fp-5"), Built: 1}
	must(t, "put 5", cs.Put(ctx, c))
	got, err := cs.Get(ctx, "crl-int", 1)
	must(t, "get", err)
	want := storage.CRL{IssuerID: "crl-int", Shard: 1, Number: 5, ThisUpdate: norm(at(0)), NextUpdate: norm(at(24 * time.Hour)),
		DER: []byte("crl-5"), Fingerprint: []byte("fp-5"), Revision: 1, Built: 1}
	same(t, "stored CRL", got, &want)
	if got.Stale() {
		t.Fatal("CRL built from the last revision is stale")
	}
	h, err = cs.Head(ctx, "crl-int", 1)
	must(t, "head", err)
	want.DER = nil
	same(t, "head", h, &want)

	tests := []struct {
		name   string
		number int64
		err    error
	}{
		{"same number", 5, storage.ErrConflict},
		{"lower number", 4, storage.ErrConflict},
		{"higher number", 7, nil},
		{"back below", 6, storage.ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := cs.Put(ctx, &storage.CRL{IssuerID: "crl-int", Shard: 1, Number: tt.number, DER: []byte(fmt.Sprint(tt.number)), Built: 1})
			if !errors.Is(err, tt.err) {
				t.Fatalf("put %d: %v, want %v", tt.number, err, tt.err)
			}
		})
	}
	if g, _ := cs.Get(ctx, "crl-int", 1); g.Number != 7 || string(g.DER) != "7" {
		t.Fatalf("stored %d %q, want 7", g.Number, g.DER)
	}
	if err := cs.Put(ctx, &storage.CRL{IssuerID: "crl-int", Shard: 1}); err == nil {
		t.Fatal("a CRL without number stored")
	}

	// A revocation after the CRL makes it stale; the next Put keeps the
	// revision count and records what it was built from.
	must(t, "touch", cs.Touch(ctx, "crl-int", 1))
	must(t, "touch", cs.Touch(ctx, "crl-int", 1))
	h, _ = cs.Head(ctx, "crl-int", 1)
	if h.Revision != 3 || h.Built != 1 || !h.Stale() {
		t.Fatalf("after touches %+v", h)
	}
	must(t, "put 8", cs.Put(ctx, &storage.CRL{IssuerID: "crl-int", Shard: 1, Number: 8, DER: []byte("8"), Built: 3}))
	h, _ = cs.Head(ctx, "crl-int", 1)
	if h.Revision != 3 || h.Built != 3 || h.Stale() {
		t.Fatalf("after put %+v", h)
	}

	must(t, "put shard 0", cs.Put(ctx, &storage.CRL{IssuerID: "crl-int", Shard: 0, Number: 9, DER: []byte("9")}))
	list, err := cs.List(ctx)
	must(t, "list", err)
	if len(list) != 2 || list[0].Shard != 0 || list[1].Shard != 1 || list[0].DER != nil || list[1].Number != 8 {
		t.Fatalf("list %+v", list)
	}

	// Concurrent generators, each allocating its number and storing in one
	// transaction: every one succeeds and the highest number is stored.
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.InTx(ctx, func(tx storage.Repos) error {
				num, err := tx.Issuers().NextCRLNumber(ctx, "crl-int")
				if err != nil {
					return err
				}
				return tx.CRLs().Put(ctx, &storage.CRL{IssuerID: "crl-int", Shard: 2, Number: num, DER: []byte(fmt.Sprint(num))})
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		must(t, fmt.Sprint("generator ", i), err)
	}
	is, _ := s.Issuers().Get(ctx, "crl-int")
	if g, _ := cs.Get(ctx, "crl-int", 2); g == nil || g.Number != is.CRLNumber || string(g.DER) != fmt.Sprint(is.CRLNumber) {
		t.Fatalf("stored %+v, issuer's last number %d", g, is.CRLNumber)
	}
}
