package storagetest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/sigil-ca/sigil/storage"
)

// testPoliciesAudit is one group for both repositories added together (the
// policies table and the audit chain), so the suite's table grows by a line.
func testPoliciesAudit(t *testing.T, s storage.Store) {
	t.Run("Policies", func(t *testing.T) { testPolicies(t, s) })
	t.Run("AuditLog", func(t *testing.T) { testAuditLog(t, s) })
}

func testPolicies(t *testing.T, s storage.Store) {
	ctx := t.Context()
	p := s.Policies()
	got, err := p.List(ctx)
	must(t, "list empty", err)
	if len(got) != 0 {
		t.Fatalf("empty store lists %v", got)
	}
	_, err = p.Get(ctx, "nope")
	wantErr(t, "get absent", err, storage.ErrNotFound)
	wantErr(t, "delete absent", p.Delete(ctx, "nope"), storage.ErrNotFound)

	must(t, "put a", p.Put(ctx, "a", []byte("rules: []\n")))
	must(t, "put b", p.Put(ctx, "b", []byte("rules:\n  - path: x\n")))
	must(t, "replace a", p.Put(ctx, "a", []byte("rules: [] # v2\n")))
	doc, err := p.Get(ctx, "a")
	must(t, "get a", err)
	same(t, "a", string(doc), "rules: [] # v2\n")
	got, err = p.List(ctx)
	must(t, "list", err)
	same(t, "list", got, map[string][]byte{"a": []byte("rules: [] # v2\n"), "b": []byte("rules:\n  - path: x\n")})
	must(t, "delete a", p.Delete(ctx, "a"))
	_, err = p.Get(ctx, "a")
	wantErr(t, "get deleted", err, storage.ErrNotFound)
	// An empty document round-trips (validation is the policy package's job).
	must(t, "put empty", p.Put(ctx, "e", nil))
	doc, err = p.Get(ctx, "e")
	must(t, "get empty", err)
	if len(doc) != 0 {
		t.Fatalf("empty document reads back %q", doc)
	}
}

// link builds the record that follows a head; the hash mimics the audit
// package's chain so the suite can check the head moves with it.
func link(payload string) func(int64, []byte) (*storage.AuditRecord, error) {
	return func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error) {
		h := sha256.Sum256(append(slices.Clone(prevHash), payload...))
		return &storage.AuditRecord{Seq: prevSeq + 1, Time: at(0), PrevHash: prevHash, Hash: h[:], Record: []byte(payload)}, nil
	}
}

func testAuditLog(t *testing.T, s storage.Store) {
	ctx := t.Context()
	a := s.Audit()
	seq, hash, err := a.Head(ctx)
	must(t, "head of empty log", err)
	if seq != 0 || len(hash) != 0 {
		t.Fatalf("empty head %d %x", seq, hash)
	}
	for i := range 3 {
		must(t, "append", a.Append(ctx, link(fmt.Sprintf(`{"n":%d}`, i))))
	}
	recs, err := a.List(ctx, 0, 0)
	must(t, "list", err)
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	var prev []byte
	for i, r := range recs {
		if r.Seq != int64(i+1) || !bytes.Equal(r.PrevHash, prev) || !r.Time.Equal(norm(at(0))) ||
			string(r.Record) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Fatalf("record %d: %+v", i, r)
		}
		if i == 0 && len(r.PrevHash) != 0 {
			t.Fatalf("first record has prev hash %x", r.PrevHash)
		}
		prev = r.Hash
	}
	seq, hash, err = a.Head(ctx)
	must(t, "head", err)
	if seq != 3 || !bytes.Equal(hash, prev) {
		t.Fatalf("head %d %x, want 3 %x", seq, hash, prev)
	}
	page, err := a.List(ctx, 1, 1)
	must(t, "page", err)
	if len(page) != 1 || page[0].Seq != 2 {
		t.Fatalf("page after 1: %+v", page)
	}

	t.Run("Rejects", func(t *testing.T) {
		// A record that does not follow the head is refused and the head
		// stays where it was.
		err := a.Append(ctx, func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error) {
			return &storage.AuditRecord{Seq: prevSeq + 2, PrevHash: prevHash, Hash: []byte{1}}, nil
		})
		wantErr(t, "skip a seq", err, storage.ErrConflict)
		err = a.Append(ctx, func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error) {
			return &storage.AuditRecord{Seq: prevSeq + 1, PrevHash: []byte("forged"), Hash: []byte{1}}, nil
		})
		wantErr(t, "wrong prev hash", err, storage.ErrConflict)
		boom := errors.New("boom")
		err = a.Append(ctx, func(int64, []byte) (*storage.AuditRecord, error) { return nil, boom })
		wantErr(t, "build error", err, boom)
		seq, _, err := a.Head(ctx)
		must(t, "head", err)
		if seq != 3 {
			t.Fatalf("head moved to %d after failed appends", seq)
		}
	})

	t.Run("InTx", func(t *testing.T) {
		// An append inside a transaction that rolls back leaves no trace.
		rollback := errors.New("rollback")
		err := s.InTx(ctx, func(tx storage.Repos) error {
			must(t, "append in tx", tx.Audit().Append(ctx, link("tx")))
			return rollback
		})
		wantErr(t, "tx", err, rollback)
		seq, _, err := a.Head(ctx)
		must(t, "head", err)
		if seq != 3 {
			t.Fatalf("rolled-back append moved the head to %d", seq)
		}
	})

	t.Run("Batch", func(t *testing.T) {
		// A batch links each record to the one before it and moves the
		// head once, to the last; a failing build anywhere in a batch
		// stores none of it.
		seq0, hash0, err := a.Head(ctx)
		must(t, "head", err)
		boom := errors.New("boom")
		bad := func(int64, []byte) (*storage.AuditRecord, error) { return nil, boom }
		forged := func(prevSeq int64, prevHash []byte) (*storage.AuditRecord, error) {
			return &storage.AuditRecord{Seq: prevSeq + 1, PrevHash: []byte("forged"), Hash: []byte{1}}, nil
		}
		for name, tc := range map[string]struct {
			builds []func(int64, []byte) (*storage.AuditRecord, error)
			want   error
		}{
			"build error last": {[]func(int64, []byte) (*storage.AuditRecord, error){link("b0"), link("b1"), bad}, boom},
			"forged middle":    {[]func(int64, []byte) (*storage.AuditRecord, error){link("b0"), forged, link("b2")}, storage.ErrConflict},
		} {
			wantErr(t, name, a.AppendBatch(ctx, tc.builds), tc.want)
			seq, hash, err := a.Head(ctx)
			must(t, "head", err)
			if seq != seq0 || !bytes.Equal(hash, hash0) {
				t.Fatalf("%s: head moved to %d", name, seq)
			}
			recs, err := a.List(ctx, seq0, 0)
			must(t, "list", err)
			if len(recs) != 0 {
				t.Fatalf("%s: failed batch stored %d records", name, len(recs))
			}
		}
		must(t, "empty batch", a.AppendBatch(ctx, nil))
		must(t, "batch", a.AppendBatch(ctx, []func(int64, []byte) (*storage.AuditRecord, error){link("b0"), link("b1"), link("b2")}))
		recs, err := a.List(ctx, seq0, 0)
		must(t, "list", err)
		if len(recs) != 3 {
			t.Fatalf("batch stored %d records", len(recs))
		}
		prev := hash0
		for i, r := range recs {
			if r.Seq != seq0+int64(i+1) || !bytes.Equal(r.PrevHash, prev) || string(r.Record) != fmt.Sprintf("b%d", i) {
				t.Fatalf("batch record %d: %+v", i, r)
			}
			prev = r.Hash
		}
		seq, hash, err := a.Head(ctx)
		must(t, "head", err)
		if seq != seq0+3 || !bytes.Equal(hash, prev) {
			t.Fatalf("head after batch %d %x, want %d %x", seq, hash, seq0+3, prev)
		}
		// Rolled back with its transaction like any write.
		rollback := errors.New("rollback")
		err = s.InTx(ctx, func(tx storage.Repos) error {
			must(t, "batch in tx", tx.Audit().AppendBatch(ctx, []func(int64, []byte) (*storage.AuditRecord, error){link("t0"), link("t1")}))
			return rollback
		})
		wantErr(t, "tx", err, rollback)
		if seq2, _, err := a.Head(ctx); err != nil || seq2 != seq0+3 {
			t.Fatalf("rolled-back batch: head %d %v", seq2, err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		// Concurrent appenders (single records and batches) each get
		// distinct seqs and the chain stays linear: every record's
		// PrevHash is its predecessor's Hash.
		seq0, _, err := a.Head(ctx)
		must(t, "head", err)
		const workers, each = 4, 10
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					var err error
					if w%2 == 0 {
						err = a.Append(ctx, link(fmt.Sprintf("w%d-%d", w, i)))
					} else {
						err = a.AppendBatch(ctx, []func(int64, []byte) (*storage.AuditRecord, error){
							link(fmt.Sprintf("w%d-%d-a", w, i)), link(fmt.Sprintf("w%d-%d-b", w, i))})
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("append: %v", err)
		}
		var all []*storage.AuditRecord
		var after int64
		for {
			page, err := a.List(ctx, after, 7)
			must(t, "list", err)
			if len(page) == 0 {
				break
			}
			all = append(all, page...)
			after = page[len(page)-1].Seq
		}
		// Even workers append one record per call, odd ones two.
		if want := int(seq0) + workers*each*3/2; len(all) != want {
			t.Fatalf("%d records, want %d", len(all), want)
		}
		for i := 1; i < len(all); i++ {
			if all[i].Seq != all[i-1].Seq+1 || !bytes.Equal(all[i].PrevHash, all[i-1].Hash) {
				t.Fatalf("chain broken at seq %d", all[i].Seq)
			}
		}
	})
}
