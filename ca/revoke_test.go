package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/pausepoint"
	"github.com/sigil-ca/sigil/storage"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
	"golang.org/x/crypto/ocsp"
)

// testClock is a settable Config.Now.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// issueN signs n server certificates.
func issueN(t testing.TB, a *Authority, n int) []*Issued {
	t.Helper()
	var out []*Issued
	for i := 0; i < n; i++ {
		iss, err := a.Sign(context.Background(), SignRequest{CSR: serverCSR(t, "h.example.test")})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, iss)
	}
	return out
}

func parseIDP(t *testing.T, crl *x509.RevocationList) (string, bool) {
	t.Helper()
	for _, ext := range crl.Extensions {
		if ext.Id.Equal(oidIssuingDistributionPoint) {
			if !ext.Critical {
				t.Fatal("IDP extension not critical")
			}
			var idp issuingDistributionPoint
			if rest, err := asn1.Unmarshal(ext.Value, &idp); err != nil || len(rest) > 0 {
				t.Fatalf("IDP: %v", err)
			}
			if len(idp.DistributionPoint.FullName) != 1 || idp.DistributionPoint.FullName[0].Tag != 6 {
				t.Fatalf("IDP names: %+v", idp.DistributionPoint.FullName)
			}
			return string(idp.DistributionPoint.FullName[0].Bytes), idp.OnlyContainsUserCerts
		}
	}
	t.Fatal("CRL has no IDP extension")
	return "", false
}

func TestRevokeAndCRL(t *testing.T) {
	ctx := context.Background()
	clk := &testClock{t: time.Now()}
	cfg := testConfig()
	cfg.Now = clk.Now
	cfg.CRLLifetime = 24 * time.Hour
	e := newEnv(t, cfg, true)
	a := e.ca
	certs := issueN(t, a, 12)
	victim := certs[0]
	shard := victim.Record.CRLShard
	id := victim.Record.IssuerID
	inter := a.Chain()[0]

	crl0, err := a.CRL(ctx, id, shard)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Revoke(ctx, victim.Record.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	der, err := a.CRL(ctx, id, shard)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(der, crl0) {
		t.Fatal("CRL not regenerated after revocation")
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(inter); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("%d entries, want 1", len(crl.RevokedCertificateEntries))
	}
	ent := crl.RevokedCertificateEntries[0]
	if ent.SerialNumber.Cmp(victim.Certificate.SerialNumber) != 0 || ent.ReasonCode != ReasonKeyCompromise {
		t.Fatalf("entry %x reason %d", ent.SerialNumber, ent.ReasonCode)
	}
	url, userOnly := parseIDP(t, crl)
	if url != victim.Certificate.CRLDistributionPoints[0] || url != a.CRLURL(id, shard) || !userOnly {
		t.Fatalf("IDP %s (user only %v), want the certificate's CDP %s", url, userOnly, victim.Certificate.CRLDistributionPoints[0])
	}
	n1 := crl.Number
	// Cached until something changes.
	again, _ := a.CRL(ctx, id, shard)
	if !bytes.Equal(again, der) {
		t.Fatal("unchanged CRL regenerated")
	}
	// Other shards do not list it.
	other := (shard + 1) % cfg.CRLShards
	oder, err := a.CRL(ctx, id, other)
	if err != nil {
		t.Fatal(err)
	}
	ocrl, _ := x509.ParseRevocationList(oder)
	for _, ent := range ocrl.RevokedCertificateEntries {
		if ent.SerialNumber.Cmp(victim.Certificate.SerialNumber) == 0 {
			t.Fatal("revoked serial on the wrong shard")
		}
	}
	if u, _ := parseIDP(t, ocrl); u != a.CRLURL(id, other) {
		t.Fatalf("other shard IDP %s", u)
	}

	// Errors.
	if err := a.Revoke(ctx, victim.Record.Serial, ReasonSuperseded); KindOf(err) != KindConflict {
		t.Fatalf("double revoke: %v", err)
	}
	if err := a.Revoke(ctx, "abcdef0123", ReasonSuperseded); KindOf(err) != KindNotFound {
		t.Fatalf("unknown serial: %v", err)
	}
	if err := a.Revoke(ctx, certs[1].Record.Serial, 7); KindOf(err) != KindBadRequest {
		t.Fatalf("reason 7: %v", err)
	}
	if err := a.Revoke(ctx, "zz", 0); KindOf(err) != KindBadRequest {
		t.Fatalf("bad serial: %v", err)
	}
	if _, err := a.CRL(ctx, id, cfg.CRLShards); KindOf(err) != KindNotFound {
		t.Fatalf("shard out of range: %v", err)
	}
	if _, err := a.CRL(ctx, "nope", 0); KindOf(err) != KindNotFound {
		t.Fatalf("unknown issuer: %v", err)
	}
	rec, err := a.Get(ctx, strings.ToUpper(victim.Record.Serial))
	if err != nil || rec.Status != "revoked" || rec.Reason != ReasonKeyCompromise {
		t.Fatalf("Get revoked: %v %+v", err, rec)
	}

	// Scheduled regeneration before nextUpdate, with a higher CRL number.
	clk.Add(cfg.CRLLifetime * 3 / 4)
	der2, _ := a.CRL(ctx, id, shard)
	crl2, _ := x509.ParseRevocationList(der2)
	if crl2.Number.Cmp(n1) <= 0 || !crl2.ThisUpdate.After(crl.ThisUpdate) {
		t.Fatalf("CRL number %v after %v: not regenerated before nextUpdate", crl2.Number, n1)
	}

	// The background refresh regenerates a stored CRL a revocation made
	// stale, without a fetch.
	k := crlKey{id, certs[2].Record.CRLShard}
	before, err := a.CRL(ctx, k.issuer, k.shard) // make sure it is stored
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Revoke(ctx, certs[2].Record.Serial, ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	if h, err := e.store.CRLs().Head(ctx, k.issuer, k.shard); err != nil || !h.Stale() {
		t.Fatalf("stored CRL not marked stale by the revocation: %+v %v", h, err)
	}
	a.refreshCRLs(ctx, false)
	stored, err := e.store.CRLs().Get(ctx, k.issuer, k.shard)
	if err != nil || stored.Stale() || bytes.Equal(stored.DER, before) {
		t.Fatalf("refreshCRLs left the stored CRL stale: %v", err)
	}
	c, _ := x509.ParseRevocationList(stored.DER)
	found := false
	for _, ent := range c.RevokedCertificateEntries {
		found = found || ent.SerialNumber.Cmp(certs[2].Certificate.SerialNumber) == 0
	}
	if !found {
		t.Fatal("refreshed CRL misses the revocation")
	}
	// A recheck of an unchanged shard signs nothing new.
	a.refreshCRLs(ctx, true)
	if again, _ := e.store.CRLs().Get(ctx, k.issuer, k.shard); again.Number != stored.Number {
		t.Fatalf("unchanged CRL re-signed on recheck: %d after %d", again.Number, stored.Number)
	}
}

func ocspQuery(t *testing.T, a *Authority, cert, issuer *x509.Certificate) *ocsp.Response {
	t.Helper()
	req, err := ocsp.CreateRequest(cert, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := a.OCSP(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ocsp.ParseResponseForCert(raw, cert, issuer)
	if err != nil {
		t.Fatalf("OCSP response: %v", err)
	}
	return resp
}

func TestOCSP(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	a := e.ca
	certs := issueN(t, a, 2)
	good, revoked := certs[0], certs[1]
	inter := a.Chain()[0]

	resp := ocspQuery(t, a, good.Certificate, inter)
	if resp.Status != ocsp.Good {
		t.Fatalf("status %d, want good", resp.Status)
	}
	// Delegated responder: issued by the intermediate, OCSPSigning, nocheck.
	rc := resp.Certificate
	if rc == nil || rc.CheckSignatureFrom(inter) != nil || len(rc.ExtKeyUsage) != 1 || rc.ExtKeyUsage[0] != x509.ExtKeyUsageOCSPSigning {
		t.Fatal("responder certificate is not a delegated OCSP signer of the intermediate")
	}
	nocheck := false
	for _, ext := range rc.Extensions {
		nocheck = nocheck || ext.Id.Equal(oidOCSPNoCheck)
	}
	if !nocheck {
		t.Fatal("responder certificate lacks id-pkix-ocsp-nocheck")
	}
	if !resp.NextUpdate.After(resp.ThisUpdate) || resp.NextUpdate.Sub(resp.ThisUpdate) > DefaultOCSPLifetime {
		t.Fatalf("thisUpdate %v nextUpdate %v", resp.ThisUpdate, resp.NextUpdate)
	}
	// The responder key is in custody and the certificate in the inventory.
	if _, err := e.custody.Key(ctx, ocspKeyPrefix+good.Record.IssuerID[:16]); err != nil {
		t.Fatalf("responder key: %v", err)
	}
	if rec, err := a.Get(ctx, serialHex(rc.SerialNumber)); err != nil || rec.Profile != profileOCSPSigner {
		t.Fatalf("responder certificate not in inventory: %v", err)
	}
	assertLintClean(t, a, "ocsp responder", rc.Raw)

	// Cached: the same bytes until revocation.
	req, _ := ocsp.CreateRequest(good.Certificate, inter, nil)
	r1, _ := a.OCSP(ctx, req)
	r2, _ := a.OCSP(ctx, req)
	if !bytes.Equal(r1, r2) {
		t.Fatal("OCSP response not cached")
	}

	if err := a.Revoke(ctx, revoked.Record.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	resp = ocspQuery(t, a, revoked.Certificate, inter)
	if resp.Status != ocsp.Revoked || resp.RevocationReason != ReasonKeyCompromise || resp.RevokedAt.IsZero() {
		t.Fatalf("status %d reason %d, want revoked/keyCompromise", resp.Status, resp.RevocationReason)
	}
	// A revocation invalidates the cached response.
	ocspQuery(t, a, good.Certificate, inter)
	if err := a.Revoke(ctx, good.Record.Serial, ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	if resp := ocspQuery(t, a, good.Certificate, inter); resp.Status != ocsp.Revoked {
		t.Fatal("cached good response served after revocation")
	}

	// Unknown serial of a known issuer.
	fake := *good.Certificate
	fake.SerialNumber = new(big.Int).Add(good.Certificate.SerialNumber, big.NewInt(1))
	if resp := ocspQuery(t, a, &fake, inter); resp.Status != ocsp.Unknown {
		t.Fatalf("unknown serial: status %d", resp.Status)
	}
	// SHA-256 CertIDs work too.
	req256, _ := ocsp.CreateRequest(certs[0].Certificate, inter, &ocsp.RequestOptions{Hash: 5 /* crypto.SHA256 */})
	raw, err := a.OCSP(ctx, req256)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := ocsp.ParseResponseForCert(raw, certs[0].Certificate, inter); err != nil || resp.Status != ocsp.Revoked {
		t.Fatalf("SHA-256 CertID: %v", err)
	}
	// An issuer this CA does not have, and garbage.
	other := newEnv(t, testConfig(), true)
	oc := issueN(t, other.ca, 1)[0]
	oreq, _ := ocsp.CreateRequest(oc.Certificate, other.ca.Chain()[0], nil)
	if raw, err := a.OCSP(ctx, oreq); err != nil || !bytes.Equal(raw, ocsp.UnauthorizedErrorResponse) {
		t.Fatalf("foreign issuer: %v", err)
	}
	if raw, err := a.OCSP(ctx, []byte("junk")); err != nil || !bytes.Equal(raw, ocsp.MalformedRequestErrorResponse) {
		t.Fatalf("junk: %v", err)
	}
}

func TestOCSPResponderRotation(t *testing.T) {
	clk := &testClock{t: time.Now()}
	cfg := testConfig()
	cfg.Now = clk.Now
	e := newEnv(t, cfg, true)
	c := issueN(t, e.ca, 1)[0]
	inter := e.ca.Chain()[0]
	r1 := ocspQuery(t, e.ca, c.Certificate, inter).Certificate
	clk.Add(DefaultOCSPSignerTTL / 2)
	r2 := ocspQuery(t, e.ca, c.Certificate, inter).Certificate
	if !r1.Equal(r2) {
		t.Fatal("responder re-issued too early")
	}
	clk.Add(DefaultOCSPSignerTTL / 3)
	resp := ocspQuery(t, e.ca, c.Certificate, inter)
	if resp.Certificate.Equal(r1) {
		t.Fatal("responder certificate not rotated before expiry")
	}
	if resp.NextUpdate.After(resp.Certificate.NotAfter) {
		t.Fatal("response outlives its responder certificate")
	}
}

// TestSharedStoreInstances: two Authorities over one database (two
// replicas). A revocation through one is in the other's next CRL, and in
// its OCSP responses within the OCSP recheck interval.
func TestSharedStoreInstances(t *testing.T) {
	ctx := context.Background()
	clk := &testClock{t: time.Now()}
	cfg := testConfig()
	cfg.Now = clk.Now
	e := newEnv(t, cfg, true)
	a := e.ca
	b := e.reopen(t)
	c := issueN(t, a, 1)[0]
	inter := a.Chain()[0]
	id, shard := c.Record.IssuerID, c.Record.CRLShard

	if resp := ocspQuery(t, a, c.Certificate, inter); resp.Status != ocsp.Good {
		t.Fatal("not good")
	}
	crl1, err := a.CRL(ctx, id, shard)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Revoke(ctx, c.Record.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	// The CRL: at once, without waiting for any interval (issue 18).
	crl2, err := a.CRL(ctx, id, shard)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(crl1, crl2) {
		t.Fatal("other instance's revocation not in the CRL")
	}
	clk.Add(ocspRecheck + time.Second)
	if resp := ocspQuery(t, a, c.Certificate, inter); resp.Status != ocsp.Revoked {
		t.Fatal("other instance's revocation not seen by OCSP after the recheck interval")
	}
	parsed, _ := x509.ParseRevocationList(crl2)
	if len(parsed.RevokedCertificateEntries) != 1 {
		t.Fatal("CRL entries")
	}
	// Unchanged: both serve the stored CRL, b without signing its own.
	clk.Add(crlRecheck + time.Second)
	crl3, _ := a.CRL(ctx, id, shard)
	crl4, _ := b.CRL(ctx, id, shard)
	if !bytes.Equal(crl2, crl3) || !bytes.Equal(crl2, crl4) {
		t.Fatal("unchanged CRL re-signed")
	}
}

func TestCRLLintClean(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	c := issueN(t, e.ca, 1)[0]
	if err := e.ca.Revoke(ctx, c.Record.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	for _, in := range e.ca.Issuers() {
		der, err := e.ca.CRL(ctx, in.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if in.ID == c.Record.IssuerID {
			der, _ = e.ca.CRL(ctx, in.ID, c.Record.CRLShard)
		}
		zc, err := zx509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		rs := zlint.LintRevocationListEx(zc, e.ca.lintReg)
		if f := lintFindings(rs, lint.Warn); len(f) > 0 {
			t.Errorf("%s CRL: %v", in.Kind, f)
		}
	}
}

// pausingCAStore holds a certificate read at its Point, between the read
// and its return.
type pausingCAStore struct {
	Store
	at pausepoint.Point
}

func (p *pausingCAStore) Certificates() storage.Certificates {
	return pausingCerts{p.Store.Certificates(), p}
}

type pausingCerts struct {
	storage.Certificates
	p *pausingCAStore
}

func (c pausingCerts) Get(ctx context.Context, serial string) (*storage.Certificate, error) {
	rec, err := c.Certificates.Get(ctx, serial)
	c.p.at.Here()
	return rec, err
}

// TestOCSPRevocationRacingQuery: an OCSP query that read a certificate's
// status just before the certificate was revoked on this node may answer
// good (it began first), but must not cache that answer: the next query
// says revoked at once, not after ocspRecheck.
func TestOCSPRevocationRacingQuery(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	a := e.ca
	cert := issueN(t, a, 1)[0]
	inter := a.Chain()[0]
	ps := &pausingCAStore{Store: a.store}
	a.store = ps
	req, err := ocsp.CreateRequest(cert.Certificate, inter, nil)
	if err != nil {
		t.Fatal(err)
	}
	qerr, rerr := ps.at.Interleave(func() error { _, err := a.OCSP(ctx, req); return err },
		func() error { return a.Revoke(ctx, cert.Record.Serial, ReasonKeyCompromise) })
	if qerr != nil || rerr != nil {
		t.Fatalf("the query that began before the revocation: %v; the revocation: %v", qerr, rerr)
	}
	if resp := ocspQuery(t, a, cert.Certificate, inter); resp.Status != ocsp.Revoked {
		t.Fatalf("status %d after a revocation on this node, want revoked (a racing query cached good)", resp.Status)
	}
}
