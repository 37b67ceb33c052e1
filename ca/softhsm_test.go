package ca

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ocsp"

	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// newSoftHSMEnv is newEnv with the CA keys on a SoftHSM token (PKCS#11).
// It sets SOFTHSM2_CONF for the process, so callers must not be parallel.
func newSoftHSMEnv(t testing.TB) *testEnv {
	t.Helper()
	ctx := context.Background()
	uri := hsmtest.NewSoftHSMToken(t)
	cust, err := hsm.OpenPKCS11(ctx, uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cust.Close() })
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := testConfig()
	a, err := New(cust, st, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.InitHierarchy(ctx, InitRequest{CommonName: "Sigil HSM Root", Organization: "Sigil Test", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	return &testEnv{custody: cust, store: st, cfg: cfg, ca: a}
}

// TestSoftHSMCustody runs the CA with its keys in a PKCS#11 token.
func TestSoftHSMCustody(t *testing.T) {
	ctx := context.Background()
	e := newSoftHSMEnv(t)
	iss := issueN(t, e.ca, 1)[0]
	verifyChain(t, e.ca, iss, x509.ExtKeyUsageServerAuth)
	if err := e.ca.Revoke(ctx, iss.Record.Serial, ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	if resp := ocspQuery(t, e.ca, iss.Certificate, e.ca.Chain()[0]); resp.Status != ocsp.Revoked {
		t.Fatal("OCSP")
	}
	if _, err := e.ca.CRL(ctx, iss.Record.IssuerID, iss.Record.CRLShard); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSignSoftHSM is BenchmarkSign with the intermediate key in
// SoftHSM.
func BenchmarkSignSoftHSM(b *testing.B) {
	ctx := context.Background()
	e := newSoftHSMEnv(b)
	csrs := benchCSRs(b, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, err := e.ca.Sign(ctx, SignRequest{CSR: csrs[i%len(csrs)], Requester: "bench"}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}
