package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/storage"
)

// testEnv is a CA over the real software keystore and SQLite storage.
type testEnv struct {
	custody hsm.Custody
	store   storage.Store
	cfg     Config
	ca      *Authority
}

const testTrustDomain = "example.org"

func testConfig() Config {
	return Config{PublicURL: "http://ca.example.test:8080", TrustDomain: testTrustDomain, CRLShards: 4}
}

// newEnv opens fresh storage and custody and, if init, a hierarchy.
func newEnv(t testing.TB, cfg Config, init bool) *testEnv {
	t.Helper()
	ctx := context.Background()
	st, bar := barriertest.New(t)
	cust := hsm.NewSoft(hsmtest.NewMemBlobStore(), bar, nil)
	t.Cleanup(func() { cust.Close() })
	a, err := New(cust, st, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{custody: cust, store: st, cfg: cfg, ca: a}
	if init {
		if err := a.InitHierarchy(ctx, InitRequest{CommonName: "Sigil Test Root", Organization: "Sigil Test", Country: "US"}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// reopen builds a second Authority over the same custody and storage, as a
// process restart does.
func (e *testEnv) reopen(t testing.TB) *Authority {
	t.Helper()
	a, err := New(e.custody, e.store, e.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustKey(t testing.TB, c elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrFor builds a PEM CSR with the given names.
func csrFor(t testing.TB, key crypto.Signer, cn string, dns []string, ips []string, uris []string, emails []string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dns, EmailAddresses: emails}
	for _, s := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(s))
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func serverCSR(t testing.TB, names ...string) []byte {
	t.Helper()
	return csrFor(t, mustKey(t, elliptic.P256()), "", names, nil, nil, nil)
}

// countCerts returns how many certificates the inventory holds.
func countCerts(t testing.TB, st Store) int {
	t.Helper()
	n, cursor := 0, ""
	for {
		list, next, err := st.Certificates().List(context.Background(), storage.CertFilter{After: cursor, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		n += len(list)
		if next == "" {
			return n
		}
		cursor = next
	}
}

func verifyChain(t testing.TB, a *Authority, iss *Issued, usage x509.ExtKeyUsage) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(a.Root())
	mids := x509.NewCertPool()
	for _, c := range iss.Chain {
		mids.AddCert(c)
	}
	if _, err := iss.Certificate.Verify(x509.VerifyOptions{Roots: roots, Intermediates: mids, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: time.Now()}); err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
}

// storageFilter builds storage.CertFilter values tersely.
type storageFilter struct {
	name           string
	revoked        bool
	expiringBefore time.Time
	limit          int
}

func (s storageFilter) f() storage.CertFilter {
	return storage.CertFilter{Name: s.name, RevokedOnly: s.revoked, ExpiringBefore: s.expiringBefore, Limit: s.limit}
}
