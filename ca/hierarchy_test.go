package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

func TestRotateIntermediate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	a := e.ca
	oldInter := a.Chain()[0]
	old := issueN(t, a, 1)[0]

	info, err := a.RotateIntermediate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Active || info.Kind != KindIntermediate || info.KeyName != "ca-int-2" {
		t.Fatalf("rotated issuer %+v", info)
	}
	newInter := a.Chain()[0]
	if newInter.Equal(oldInter) || !info.Certificate.Equal(newInter) || !a.Chain()[1].Equal(a.Root()) {
		t.Fatal("chain did not switch to the new intermediate")
	}
	fresh := issueN(t, a, 1)[0]
	if fresh.Record.IssuerID != info.ID || fresh.Certificate.CheckSignatureFrom(newInter) != nil {
		t.Fatal("new certificates not signed by the new intermediate")
	}
	verifyChain(t, a, fresh, x509.ExtKeyUsageServerAuth)
	// The old intermediate keeps serving its certificates' status.
	if err := a.Revoke(ctx, old.Record.Serial, ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	if resp := ocspQuery(t, a, old.Certificate, oldInter); resp.Status != ocsp.Revoked {
		t.Fatalf("old issuer OCSP status %d", resp.Status)
	}
	der, err := a.CRL(ctx, old.Record.IssuerID, old.Record.CRLShard)
	if err != nil {
		t.Fatal(err)
	}
	crl, _ := x509.ParseRevocationList(der)
	if crl.CheckSignatureFrom(oldInter) != nil || len(crl.RevokedCertificateEntries) != 1 {
		t.Fatal("old intermediate's CRL")
	}
	if resp := ocspQuery(t, a, fresh.Certificate, newInter); resp.Status != ocsp.Good {
		t.Fatal("new issuer OCSP")
	}
	// A restart sees the same state.
	b := e.reopen(t)
	if !b.Chain()[0].Equal(newInter) || len(b.Issuers()) != 3 {
		t.Fatal("rotation not persisted")
	}
	act := 0
	for _, in := range b.Issuers() {
		if in.Active {
			act++
		}
	}
	if act != 1 {
		t.Fatalf("%d active issuers, want 1", act)
	}
}

// externalRoot is a root CA outside Sigil (an offline root).
type externalRoot struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newExternalRoot(t *testing.T) *externalRoot {
	t.Helper()
	key := mustKey(t, elliptic.P384()).(*ecdsa.PrivateKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Offline Root", Organization: []string{"Ext"}, Country: []string{"US"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(20 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &externalRoot{key: key, cert: c}
}

func (r *externalRoot) sign(t *testing.T, csrPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("CSR from CA: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: csr.Subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, csr.PublicKey, r.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func pemOf(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func TestExternalRoot(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), false)
	a := e.ca
	root := newExternalRoot(t)
	csrPEM, err := a.CreateIntermediateCSR(ctx, InitRequest{CommonName: "Sigil Issuing CA", Organization: "Sigil Test", Country: "US"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Initialized() {
		t.Fatal("initialized before import")
	}
	inter := root.sign(t, csrPEM)

	// Refusals: no root, wrong root, key not in custody.
	if _, err := a.ImportIntermediate(ctx, pemOf(inter)); KindOf(err) != KindBadRequest {
		t.Fatalf("chain without root: %v", err)
	}
	other := newExternalRoot(t)
	if _, err := a.ImportIntermediate(ctx, pemOf(inter, other.cert)); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("wrong root: %v", err)
	}
	foreign := root.sign(t, csrFor(t, mustKey(t, elliptic.P256()), "x", nil, nil, nil, nil))
	if _, err := a.ImportIntermediate(ctx, pemOf(foreign, root.cert)); err == nil || !strings.Contains(err.Error(), "matches no key in custody") {
		t.Fatalf("foreign key: %v", err)
	}

	info, err := a.ImportIntermediate(ctx, pemOf(inter, root.cert))
	if err != nil {
		t.Fatal(err)
	}
	if !info.Active || !a.Initialized() || !a.Root().Equal(root.cert) || !a.Chain()[0].Equal(inter) {
		t.Fatal("imported hierarchy not active")
	}
	iss := issueN(t, a, 1)[0]
	verifyChain(t, a, iss, x509.ExtKeyUsageServerAuth)
	// The external root's key is not in custody: the root-signed profile
	// and rotation say so.
	if _, err := a.RotateIntermediate(ctx); err == nil || !strings.Contains(err.Error(), "external root") {
		t.Fatalf("rotate with external root: %v", err)
	}
	if err := a.InitHierarchy(ctx, InitRequest{CommonName: "x"}); KindOf(err) != KindConflict {
		t.Fatalf("init after import: %v", err)
	}
	// Re-importing the same intermediate is a conflict.
	if _, err := a.ImportIntermediate(ctx, pemOf(inter, root.cert)); KindOf(err) != KindConflict {
		t.Fatalf("re-import: %v", err)
	}
	// A second intermediate under the same root rotates.
	csr2, err := a.CreateIntermediateCSR(ctx, InitRequest{CommonName: "Sigil Issuing CA 2"})
	if err != nil {
		t.Fatal(err)
	}
	inter2 := root.sign(t, csr2)
	if _, err := a.ImportIntermediate(ctx, pemOf(inter2, root.cert)); err != nil {
		t.Fatal(err)
	}
	if !a.Chain()[0].Equal(inter2) || len(a.Issuers()) != 3 {
		t.Fatal("second import did not rotate")
	}
	if resp := ocspQuery(t, a, iss.Certificate, inter); resp.Status != ocsp.Good {
		t.Fatal("OCSP for the first imported intermediate")
	}
}

func TestExternalRootStatus(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), false)
	root := newExternalRoot(t)
	csrPEM, err := e.ca.CreateIntermediateCSR(ctx, InitRequest{CommonName: "Sigil Issuing CA", Organization: "Sigil Test", Country: "US"})
	if err != nil {
		t.Fatal(err)
	}
	inter := root.sign(t, csrPEM)
	info, err := e.ca.ImportIntermediate(ctx, pemOf(inter, root.cert))
	if err != nil {
		t.Fatal(err)
	}
	var rootID string
	for _, in := range e.ca.Issuers() {
		if in.Kind == KindRoot {
			rootID = in.ID
		}
	}
	if _, err := e.ca.CRL(ctx, rootID, 0); KindOf(err) != KindNotFound {
		t.Fatalf("external root CRL: %v", err)
	}
	req, _ := ocsp.CreateRequest(inter, root.cert, nil)
	if raw, err := e.ca.OCSP(ctx, req); err != nil || string(raw) != string(ocsp.UnauthorizedErrorResponse) {
		t.Fatalf("OCSP for the external root's certificate: %v", err)
	}
	if _, err := e.ca.CRL(ctx, info.ID, 0); err != nil {
		t.Fatalf("imported intermediate CRL: %v", err)
	}
	// The intermediate profile needs the root key.
	_, err = e.ca.SignIntermediate(ctx, SubCARequest{CSR: csrFor(t, mustKey(t, elliptic.P256()), "Sub", nil, nil, nil, nil),
		Constraints: NameConstraints{DNS: []string{"sub.example.org"}}})
	if err == nil || !strings.Contains(err.Error(), "external root") {
		t.Fatalf("intermediate profile under an external root: %v", err)
	}
}
