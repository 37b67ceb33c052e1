package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestInitHierarchy(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), false)
	if e.ca.Initialized() || e.ca.Root() != nil || e.ca.Chain() != nil {
		t.Fatal("fresh CA claims to be initialized")
	}
	if _, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "a.example.test")}); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Sign before init: got %v, want ErrNotInitialized", err)
	}
	if err := e.ca.InitHierarchy(ctx, InitRequest{CommonName: "Test Root", Organization: "Test Org"}); err != nil {
		t.Fatal(err)
	}
	root, chain := e.ca.Root(), e.ca.Chain()
	if root == nil || len(chain) != 2 || !chain[1].Equal(root) {
		t.Fatalf("chain: got %d certificates", len(chain))
	}
	inter := chain[0]
	if !root.IsCA || !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Fatalf("CA flags: root IsCA=%v, intermediate IsCA=%v pathlen=%d", root.IsCA, inter.IsCA, inter.MaxPathLen)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Fatalf("intermediate not signed by root: %v", err)
	}
	if !bytes.Equal(inter.AuthorityKeyId, root.SubjectKeyId) {
		t.Fatal("intermediate AKI != root SKI")
	}
	keys, err := e.custody.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	if strings.Join(names, ",") != "ca-int-1,ca-root-1" {
		t.Fatalf("custody keys: %v", names)
	}

	// Never silently regenerated.
	err = e.ca.InitHierarchy(ctx, InitRequest{CommonName: "Other Root"})
	if !errors.Is(err, ErrAlreadyInitialized) || KindOf(err) != KindConflict {
		t.Fatalf("second init: got %v, want ErrAlreadyInitialized", err)
	}
	// A second Authority (a restart, or another instance) also refuses.
	b := e.reopen(t)
	if err := b.InitHierarchy(ctx, InitRequest{CommonName: "Other Root"}); !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("init after reload: %v", err)
	}

	// Reload sees the same hierarchy.
	if !b.Initialized() || !b.Root().Equal(root) || !b.Chain()[0].Equal(inter) {
		t.Fatal("reloaded hierarchy differs")
	}
	iss := b.Issuers()
	if len(iss) != 2 || iss[0].Kind != KindRoot || iss[1].Kind != KindIntermediate || !iss[1].Active || iss[0].Active {
		t.Fatalf("issuers: %+v", iss)
	}
	// What a server sends after a leaf: the intermediate, not the root.
	if len(iss[1].Served) != 1 || !iss[1].Served[0].Equal(inter) || len(iss[0].Served) != 0 {
		t.Fatalf("served chains: intermediate %d certificates, root %d", len(iss[1].Served), len(iss[0].Served))
	}
	// The intermediate is in the inventory, under the root.
	rec, err := e.store.Certificates().Get(ctx, serialHex(inter.SerialNumber))
	if err != nil || rec.IssuerID != iss[0].ID {
		t.Fatalf("intermediate inventory record: %v %+v", err, rec)
	}
}

func TestSignServer(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	before := time.Now()
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "www.example.test", "api.internal"), Requester: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Certificate
	verifyChain(t, e.ca, iss, x509.ExtKeyUsageServerAuth)
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 || c.SerialNumber.BitLen() < 96 {
		t.Fatalf("serial %x: want a positive 128-bit random number", c.SerialNumber)
	}
	// Backdated by one minute from the moment of signing, which lies
	// between before and after (however slow the machine).
	after := time.Now()
	if lo, hi := before.Add(-time.Minute).Truncate(time.Second), after.Add(-time.Minute); c.NotBefore.Before(lo) || c.NotBefore.After(hi) {
		t.Fatalf("NotBefore %v, want between %v and %v (signing time minus 1m)", c.NotBefore, lo, hi)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d != 30*24*time.Hour+time.Minute {
		t.Fatalf("validity %v, want 30 days (+1m backdate)", d)
	}
	inter := e.ca.Chain()[0]
	if !bytes.Equal(c.AuthorityKeyId, inter.SubjectKeyId) || len(c.SubjectKeyId) == 0 {
		t.Fatal("SKI/AKI")
	}
	id := iss.Record.IssuerID
	if want := "http://ca.example.test:8080/crl/" + id + "/"; len(c.CRLDistributionPoints) != 1 || !strings.HasPrefix(c.CRLDistributionPoints[0], want) {
		t.Fatalf("CDP %v, want prefix %s", c.CRLDistributionPoints, want)
	}
	if want := e.ca.CRLURL(id, iss.Record.CRLShard); c.CRLDistributionPoints[0] != want {
		t.Fatalf("CDP %s, want %s", c.CRLDistributionPoints[0], want)
	}
	if len(c.OCSPServer) != 1 || c.OCSPServer[0] != "http://ca.example.test:8080/ocsp" {
		t.Fatalf("OCSP %v", c.OCSPServer)
	}
	if len(c.IssuingCertificateURL) != 1 || c.IssuingCertificateURL[0] != "http://ca.example.test:8080/ca/"+id+".der" {
		t.Fatalf("CA issuers %v", c.IssuingCertificateURL)
	}
	if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("key usage %v IsCA %v", c.KeyUsage, c.IsCA)
	}
	rec, err := e.store.Certificates().Get(ctx, serialHex(c.SerialNumber))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rec.DER, iss.DER) || rec.Profile != "server" || rec.Requester != "tester" || rec.IssuerID != id ||
		strings.Join(rec.DNSNames, ",") != "www.example.test,api.internal" {
		t.Fatalf("inventory record %+v", rec)
	}
	if rec.CRLShard != e.ca.shardFor(e.ca.activeIssuer(), c.SerialNumber) {
		t.Fatal("shard")
	}
	// TTL capping to the profile maximum.
	iss2, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "b.example.test"), TTL: 10 * 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if d := iss2.Certificate.NotAfter.Sub(iss2.Certificate.NotBefore); d != 90*24*time.Hour+time.Minute {
		t.Fatalf("capped validity %v", d)
	}
}
