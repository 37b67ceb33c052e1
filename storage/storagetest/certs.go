package storagetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

func cert(serial, issuer string, notAfter time.Time, names ...string) *storage.Certificate {
	return &storage.Certificate{
		Serial:    serial,
		IssuerID:  issuer,
		Subject:   "CN=" + serial,
		DNSNames:  names,
		NotBefore: at(-time.Hour),
		NotAfter:  notAfter,
		Profile:   "server",
		Requester: "test",
		DER:       []byte("der-" + serial),
		Status:    storage.CertValid,
		CreatedAt: at(0),
	}
}

func normCert(c storage.Certificate) *storage.Certificate {
	c.NotBefore, c.NotAfter = norm(c.NotBefore), norm(c.NotAfter)
	c.RevokedAt, c.CreatedAt = norm(c.RevokedAt), norm(c.CreatedAt)
	return &c
}

func testCertificates(t *testing.T, s storage.Store) {
	ctx := t.Context()
	cs := s.Certificates()

	t.Run("RoundTrip", func(t *testing.T) {
		tests := []struct {
			name string
			c    storage.Certificate
		}{
			{"every field", storage.Certificate{
				Serial: "0a1b2c", IssuerID: "iss-1", Subject: "CN=every.example",
				DNSNames: []string{"every.example", "www.every.example"},
				IPs:      []string{"192.0.2.1", "2001:db8::1"}, URIs: []string{"spiffe://td/w"},
				Emails: []string{"a@every.example"}, NotBefore: at(-time.Hour), NotAfter: at(90 * 24 * time.Hour),
				Profile: "server", Requester: "token:abc", DER: []byte{0x30, 0x82, 0x01, 0x00},
				Status: storage.CertRevoked, RevokedAt: at(time.Minute), Reason: 4, CRLShard: 7,
				CreatedAt: at(0),
			}},
			{"empty lists and zero times", storage.Certificate{
				Serial: "0a1b2d", IssuerID: "iss-1", DNSNames: []string{}, DER: []byte{1},
				Status: storage.CertValid, CreatedAt: at(time.Second),
			}},
			{"nil lists", storage.Certificate{
				Serial: "0a1b2e", IssuerID: "iss-1", Subject: "CN=x", DER: []byte{2},
				Status: storage.CertValid, CreatedAt: at(2 * time.Second),
			}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				in := tc.c
				must(t, "put", cs.Put(ctx, &in))
				got, err := cs.Get(ctx, tc.c.Serial)
				must(t, "get", err)
				same(t, "certificate", got, normCert(tc.c))
			})
		}
	})

	t.Run("Defaults", func(t *testing.T) {
		c := &storage.Certificate{Serial: "de", IssuerID: "iss-1", DER: []byte{1}}
		before := time.Now().Add(-time.Second)
		must(t, "put", cs.Put(ctx, c))
		got, err := cs.Get(ctx, "de")
		must(t, "get", err)
		if got.Status != storage.CertValid || got.CreatedAt.Before(before) || !got.CreatedAt.Equal(c.CreatedAt) {
			t.Fatalf("defaults: status %q created %v (put set %v)", got.Status, got.CreatedAt, c.CreatedAt)
		}
	})

	t.Run("Errors", func(t *testing.T) {
		must(t, "put", cs.Put(ctx, cert("e1", "iss-1", at(time.Hour))))
		wantErr(t, "duplicate put", cs.Put(ctx, cert("e1", "iss-2", at(time.Hour))), storage.ErrConflict)
		_, err := cs.Get(ctx, "nope")
		wantErr(t, "get missing", err, storage.ErrNotFound)
		wantErr(t, "revoke missing", cs.Revoke(ctx, "nope", 1, at(0)), storage.ErrNotFound)
		got, err := cs.Get(ctx, "e1")
		must(t, "get", err)
		if got.IssuerID != "iss-1" {
			t.Fatalf("conflicting put overwrote the certificate")
		}
	})

	t.Run("PutBatch", func(t *testing.T) {
		// 103 certificates (64+32+4+2+1 rows per statement), each with its
		// own names and one shared name, and a different number of names
		// each, so the names' statements have other sizes again.
		var batch []*storage.Certificate
		for i := range 103 {
			names := []string{fmt.Sprintf("b%03d.example", i), "batch-shared.example"}
			for j := range i % 4 {
				names = append(names, fmt.Sprintf("alt%d.b%03d.example", j, i))
			}
			batch = append(batch, cert(fmt.Sprintf("b%03d", i), "iss-b", at(time.Hour), names...))
		}
		must(t, "put batch", cs.PutBatch(ctx, batch))
		for _, i := range []int{0, 63, 64, 95, 96, 101, 102} {
			got, err := cs.Get(ctx, batch[i].Serial)
			must(t, "get", err)
			same(t, "certificate "+batch[i].Serial, got, normCert(*batch[i]))
			list, _, err := cs.List(ctx, storage.CertFilter{Name: fmt.Sprintf("alt%d.b%03d.example", i%4-1, i)})
			must(t, "list by name", err)
			if i%4 > 0 && (len(list) != 1 || list[0].Serial != batch[i].Serial) {
				t.Fatalf("by its last name: %v", ids(list, func(c *storage.Certificate) string { return c.Serial }))
			}
		}
		shared, _, err := cs.List(ctx, storage.CertFilter{Name: "batch-shared.example", Limit: 1000})
		must(t, "list shared", err)
		same(t, "shared name", len(shared), 103)
		must(t, "empty batch", cs.PutBatch(ctx, nil))

		// A serial already stored, or repeated in the batch, refuses the
		// whole batch in a transaction: nothing of it stays.
		for name, bad := range map[string][]*storage.Certificate{
			"stored serial":   {cert("c-new-1", "iss-b", at(time.Hour), "new1.example"), cert("b050", "iss-b", at(time.Hour))},
			"repeated serial": {cert("c-new-2", "iss-b", at(time.Hour), "new2.example"), cert("c-new-2", "iss-b", at(time.Hour))},
		} {
			err := s.InTx(ctx, func(tx storage.Repos) error { return tx.Certificates().PutBatch(ctx, bad) })
			wantErr(t, name, err, storage.ErrConflict)
			_, err = cs.Get(ctx, bad[0].Serial)
			wantErr(t, name+": first of the batch", err, storage.ErrNotFound)
			wantErr(t, name+", outside a transaction", cs.PutBatch(ctx, bad), storage.ErrConflict)
			_, err = cs.Get(ctx, bad[0].Serial)
			wantErr(t, name+", outside a transaction: first of the batch", err, storage.ErrNotFound)
		}
		got, err := cs.Get(ctx, "b050")
		must(t, "get b050", err)
		same(t, "b050 unchanged", got, normCert(*batch[50]))
	})

	t.Run("Revoke", func(t *testing.T) {
		must(t, "put", cs.Put(ctx, cert("r1", "iss-1", at(time.Hour))))
		must(t, "revoke", cs.Revoke(ctx, "r1", 1, at(time.Minute)))
		wantErr(t, "second revoke", cs.Revoke(ctx, "r1", 5, at(2*time.Minute)), storage.ErrConflict)
		got, err := cs.Get(ctx, "r1")
		must(t, "get", err)
		if got.Status != storage.CertRevoked || got.Reason != 1 || !got.RevokedAt.Equal(norm(at(time.Minute))) {
			t.Fatalf("revoked: status %q reason %d at %v; want first revocation kept", got.Status, got.Reason, got.RevokedAt)
		}
	})
}

// testCertList runs on its own store so the expected sets are exact.
func testCertList(t *testing.T, s storage.Store) {
	ctx := t.Context()
	cs := s.Certificates()
	shard1, shard2 := 1, 2
	// 10 certificates: c00..c09; even ones from issuer A expire early,
	// odd ones from issuer B late; c03 and c04 are revoked.
	for i, serial := range seq("c", 10) {
		issuer, notAfter, shard := "A", at(time.Duration(i)*time.Hour), shard1
		if i%2 == 1 {
			issuer, notAfter, shard = "B", at(time.Duration(100+i)*time.Hour), shard2
		}
		c := cert(serial, issuer, notAfter, serial+".example", "shared.example")
		c.IPs = []string{"10.0.0." + serial[1:]}
		c.CRLShard = shard
		must(t, "put", cs.Put(ctx, c))
	}
	must(t, "revoke", cs.Revoke(ctx, "c03", 1, at(0)))
	must(t, "revoke", cs.Revoke(ctx, "c04", 1, at(0)))

	tests := []struct {
		name string
		f    storage.CertFilter
		want []string
	}{
		{"all", storage.CertFilter{}, seq("c", 10)},
		{"by dns name", storage.CertFilter{Name: "c05.example"}, []string{"c05"}},
		{"by shared name", storage.CertFilter{Name: "shared.example", Limit: 3}, []string{"c00", "c01", "c02"}},
		{"by subject", storage.CertFilter{Name: "CN=c07"}, []string{"c07"}},
		{"by ip", storage.CertFilter{Name: "10.0.0.02"}, []string{"c02"}},
		{"unknown name", storage.CertFilter{Name: "none.example"}, nil},
		{"by issuer", storage.CertFilter{IssuerID: "B"}, []string{"c01", "c03", "c05", "c07", "c09"}},
		{"expiring before", storage.CertFilter{ExpiringBefore: at(3 * time.Hour)}, []string{"c00", "c02"}},
		{"valid at", storage.CertFilter{ValidAt: at(105 * time.Hour)}, []string{"c05", "c07", "c09"}},
		{"revoked only", storage.CertFilter{RevokedOnly: true}, []string{"c03", "c04"}},
		{"crl shard", storage.CertFilter{CRLShard: &shard1, RevokedOnly: true}, []string{"c04"}},
		{"crl shard 2", storage.CertFilter{CRLShard: &shard2, IssuerID: "B", After: "c05"}, []string{"c07", "c09"}},
		{"after", storage.CertFilter{After: "c07"}, []string{"c08", "c09"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := cs.List(ctx, tc.f)
			must(t, "list", err)
			if g := ids(got, func(c *storage.Certificate) string { return c.Serial }); !slices.Equal(g, tc.want) {
				t.Fatalf("got %v, want %v", g, tc.want)
			}
		})
	}

	t.Run("Pagination", func(t *testing.T) {
		var all []string
		f := storage.CertFilter{Limit: 3}
		pages := 0
		for {
			got, next, err := cs.List(ctx, f)
			must(t, "list", err)
			pages++
			all = append(all, ids(got, func(c *storage.Certificate) string { return c.Serial })...)
			if next == "" {
				break
			}
			if next != got[len(got)-1].Serial {
				t.Fatalf("cursor %q is not the last serial of the page", next)
			}
			f.After = next
		}
		if pages != 4 || !slices.Equal(all, seq("c", 10)) {
			t.Fatalf("%d pages %v", pages, all)
		}
		// An exactly full last page has no next cursor.
		got, next, err := cs.List(ctx, storage.CertFilter{Limit: 5, After: "c04"})
		must(t, "list", err)
		if len(got) != 5 || next != "" {
			t.Fatalf("full last page: %d items, cursor %q", len(got), next)
		}
	})

	t.Run("PruneExpired", func(t *testing.T) {
		// Due: c00, c02, c04, c06, c08 (NotAfter < base+9h).
		cutoff := at(9 * time.Hour)
		n, err := cs.PruneExpired(ctx, cutoff, 2)
		must(t, "prune", err)
		if n != 2 {
			t.Fatalf("first batch pruned %d, want 2", n)
		}
		total := n
		for n > 0 {
			n, err = cs.PruneExpired(ctx, cutoff, 2)
			must(t, "prune", err)
			total += n
		}
		if total != 5 {
			t.Fatalf("pruned %d, want 5", total)
		}
		got, _, err := cs.List(ctx, storage.CertFilter{})
		must(t, "list", err)
		if g := ids(got, func(c *storage.Certificate) string { return c.Serial }); !slices.Equal(g, []string{"c01", "c03", "c05", "c07", "c09"}) {
			t.Fatalf("left %v", g)
		}
		// Names went with them.
		got, _, err = cs.List(ctx, storage.CertFilter{Name: "c02.example"})
		must(t, "list", err)
		if len(got) != 0 {
			t.Fatalf("pruned certificate still found by name")
		}
		_, err = cs.Get(ctx, "c02")
		wantErr(t, "get pruned", err, storage.ErrNotFound)
		must(t, "re-put pruned serial", cs.Put(ctx, cert("c02", "A", at(time.Hour), "c02.example")))
		n, err = cs.PruneExpired(ctx, cutoff, 0)
		must(t, "prune limit 0", err)
		if n != 0 {
			t.Fatalf("limit 0 pruned %d", n)
		}
	})
}
