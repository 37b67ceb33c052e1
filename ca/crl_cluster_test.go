package ca_test

// Several Authorities over one database, as the nodes of a cluster are
// (issue 18): on SQLite (two handles on one file) and on PostgreSQL (two
// connection pools on one database).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"log/slog"
	"math/big"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/cluster"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/postgres"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// crlBackends open two handles on one fresh database.
var crlBackends = []struct {
	name string
	open func(t *testing.T) (storage.Store, storage.Store)
}{
	{"sqlite", func(t *testing.T) (storage.Store, storage.Store) {
		p := filepath.Join(t.TempDir(), "sigil.db")
		return barriertest.OpenSQLite(t, p), barriertest.OpenSQLite(t, p)
	}},
	{"postgres", func(t *testing.T) (storage.Store, storage.Store) {
		dsn := testharness.StartPostgres(t)
		open := func() storage.Store {
			st, err := postgres.Open(context.Background(), dsn, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
		return open(), open()
	}},
}

// crlNodes builds one Authority per store over shared custody (the HSM the
// nodes share), the hierarchy created through the first.
func crlNodes(t *testing.T, stores []storage.Store, loggers []*slog.Logger) []*ca.Authority {
	t.Helper()
	cust := hsm.NewSoft(hsmtest.NewMemBlobStore(), barriertest.Unsealed(t, stores[0]), nil)
	t.Cleanup(func() { cust.Close() })
	cfg := ca.Config{PublicURL: "http://ca.example.test:8080", CRLShards: 2}
	var out []*ca.Authority
	for i, st := range stores {
		var log *slog.Logger
		if loggers != nil {
			log = loggers[i]
		}
		a, err := ca.New(cust, st, cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := a.InitHierarchy(t.Context(), ca.InitRequest{CommonName: "CRL Cluster Root"}); err != nil {
				t.Fatal(err)
			}
		} else if err := a.Load(t.Context()); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

func crlSign(t *testing.T, a *ca.Authority) *ca.Issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"crl.example.test"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := a.Sign(t.Context(), ca.SignRequest{CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func crlFetch(t *testing.T, a *ca.Authority, issuer string, shard int) *x509.RevocationList {
	t.Helper()
	der, err := a.CRL(context.Background(), issuer, shard)
	if err != nil {
		t.Error(err)
		return nil
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Error(err)
		return nil
	}
	return crl
}

func crlLists(crl *x509.RevocationList, serial *big.Int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// TestCRLAcrossNodes: a revocation through one node is in the other's next
// CRL although that node had served (and cached) the shard's CRL before;
// numbers fetched alternately never decrease; concurrent fetches on both
// nodes after a revocation sign one new CRL between them, not one each.
func TestCRLAcrossNodes(t *testing.T) {
	for _, be := range crlBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := t.Context()
			s1, s2 := be.open(t)
			nodes := crlNodes(t, []storage.Store{s1, s2}, nil)
			a, b := nodes[0], nodes[1]
			var certs []*ca.Issued
			for range 3 {
				certs = append(certs, crlSign(t, a))
			}
			id := certs[0].Record.IssuerID
			inter := a.Chain()[0]
			for _, c := range certs {
				for _, n := range nodes {
					crlFetch(t, n, id, c.Record.CRLShard)
				}
			}
			last := map[int]*big.Int{}
			for i, c := range certs {
				if err := nodes[i%2].Revoke(ctx, c.Record.Serial, ca.ReasonKeyCompromise); err != nil {
					t.Fatal(err)
				}
				// Every node, alternately: the revocation is listed and the
				// shard's number never goes backwards.
				for j := range 4 {
					n := nodes[(i+j+1)%2]
					crl := crlFetch(t, n, id, c.Record.CRLShard)
					if crl == nil {
						t.FailNow()
					}
					if err := crl.CheckSignatureFrom(inter); err != nil {
						t.Fatal(err)
					}
					if !crlLists(crl, c.Certificate.SerialNumber) {
						t.Fatalf("revocation %d through node %d: node %d serves CRL %v without it", i, i%2, (i+j+1)%2, crl.Number)
					}
					if p := last[c.Record.CRLShard]; p != nil && crl.Number.Cmp(p) < 0 {
						t.Fatalf("shard %d: CRL number %v after %v", c.Record.CRLShard, crl.Number, p)
					}
					last[c.Record.CRLShard] = crl.Number
				}
			}

			// Concurrent fetches right after a revocation: one new CRL.
			v := crlSign(t, b)
			shard := v.Record.CRLShard
			before := crlFetch(t, a, id, shard)
			if err := b.Revoke(ctx, v.Record.Serial, ca.ReasonSuperseded); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			numbers := map[string]bool{}
			var wg sync.WaitGroup
			for i := range 16 {
				wg.Go(func() {
					crl := crlFetch(t, nodes[i%2], id, shard)
					if crl == nil {
						return
					}
					if !crlLists(crl, v.Certificate.SerialNumber) {
						t.Errorf("concurrent fetch: CRL %v misses the revocation", crl.Number)
					}
					mu.Lock()
					numbers[crl.Number.String()] = true
					mu.Unlock()
				})
			}
			wg.Wait()
			if len(numbers) != 1 || numbers[before.Number.String()] {
				t.Fatalf("concurrent fetches after one revocation got CRL numbers %v (before: %v), want one new one", numbers, before.Number)
			}
			// Both nodes hand out the same bytes.
			d1, _ := a.CRL(ctx, id, shard)
			d2, _ := b.CRL(ctx, id, shard)
			if !bytes.Equal(d1, d2) {
				t.Fatal("nodes serve different CRLs of one shard")
			}
		})
	}
}

// crlCountHandler counts log records by message.
type crlCountHandler struct {
	mu     sync.Mutex
	counts map[string]int
}

func (h *crlCountHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *crlCountHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.mu.Unlock()
	return nil
}
func (h *crlCountHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *crlCountHandler) WithGroup(string) slog.Handler      { return h }
func (h *crlCountHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

// TestCARunSingletons: two nodes on PostgreSQL run the CA's background work
// under cluster singletons: pruning runs on one node (each node would
// prune at start otherwise), a stale stored CRL is regenerated in the
// background without a fetch, and when the holder stops the other node
// takes the work over.
func TestCARunSingletons(t *testing.T) {
	dsn := testharness.StartPostgres(t)
	var stores []storage.Store
	var logs []*crlCountHandler
	var loggers []*slog.Logger
	for range 2 {
		st, err := postgres.Open(context.Background(), dsn, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		stores = append(stores, st)
		h := &crlCountHandler{counts: map[string]int{}}
		logs, loggers = append(logs, h), append(loggers, slog.New(h))
	}
	nodes := crlNodes(t, stores, loggers)
	c := crlSign(t, nodes[0])
	id, shard := c.Record.IssuerID, c.Record.CRLShard
	crlFetch(t, nodes[1], id, shard)

	const pruning = "ca: pruning expired certificates"
	var cancels []context.CancelFunc
	var done []chan struct{}
	for i, st := range stores {
		db := st.(interface{ DB() *sql.DB }).DB()
		node := cluster.New(cluster.Config{DB: db, Self: cluster.Member{ID: []string{"n0", "n1"}[i]}, HeartbeatInterval: 200 * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		ch := make(chan struct{})
		go func() {
			defer close(ch)
			_ = nodes[i].Run(ctx, node.Singleton)
		}()
		cancels, done = append(cancels, cancel), append(done, ch)
		t.Cleanup(func() { cancel(); <-ch })
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	total := func() int { return logs[0].count(pruning) + logs[1].count(pruning) }
	waitFor("a node to prune", func() bool { return total() >= 1 })
	time.Sleep(2 * time.Second) // the other node had time to start, and must not prune
	if n := total(); n != 1 {
		t.Fatalf("pruning ran %d times on two nodes at start, want once", n)
	}
	holder := 0
	if logs[1].count(pruning) == 1 {
		holder = 1
	}

	// A revocation through the idle node; the holder's CRL singleton
	// regenerates the stored CRL without anyone fetching it.
	if err := nodes[1-holder].Revoke(t.Context(), c.Record.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	var regenerated atomic.Bool
	waitFor("the stored CRL to be regenerated in the background", func() bool {
		h, err := stores[0].CRLs().Head(t.Context(), id, shard)
		regenerated.Store(err == nil && !h.Stale())
		return regenerated.Load()
	})

	// The holder stops: the other node takes pruning over.
	cancels[holder]()
	<-done[holder]
	waitFor("the other node to take pruning over", func() bool { return logs[1-holder].count(pruning) == 1 })
}
