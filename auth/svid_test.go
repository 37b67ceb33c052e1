package auth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/storage"
)

const svidTD = "sigil.test"

// svidCA is a real CA (SQLite inventory, software custody under a real
// barrier) and the inventory adapter the verifier reads it through.
type svidCA struct {
	ca      *ca.Authority
	custody hsm.Custody
	store   storage.Store
}

func (c svidCA) SVIDIssuers() []auth.SVIDIssuer {
	var out []auth.SVIDIssuer
	for _, is := range c.ca.Issuers() {
		out = append(out, auth.SVIDIssuer{ID: is.ID, Root: is.Kind == ca.KindRoot, Certificate: is.Certificate})
	}
	return out
}

func (c svidCA) Certificate(ctx context.Context, serial string) (*storage.Certificate, error) {
	return c.store.Certificates().Get(ctx, serial)
}

func (c svidCA) IsWorkloadProfile(name string) bool {
	p, ok := c.ca.Profile(name)
	return ok && p.SPIFFE
}

func newSVIDCA(t *testing.T) svidCA {
	t.Helper()
	ctx := context.Background()
	st, b := barriertest.New(t)
	cust := hsm.NewSoft(hsmtest.NewMemBlobStore(), b, nil)
	t.Cleanup(func() { cust.Close() })
	a, err := ca.New(cust, st, ca.Config{PublicURL: "http://ca.sigil.test", TrustDomain: svidTD}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.InitHierarchy(ctx, ca.InitRequest{CommonName: "Sigil SVID Test Root"}); err != nil {
		t.Fatal(err)
	}
	return svidCA{ca: a, custody: cust, store: st}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue has the CA sign a certificate for uri (if any) under profile.
func (c svidCA) issue(t *testing.T, profile, cn, uri string) *ca.Issued {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	} else {
		tmpl.DNSNames = []string{cn}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	iss, err := c.ca.Sign(context.Background(), ca.SignRequest{CSR: csr, Profile: profile, Requester: "test"})
	if err != nil {
		t.Fatalf("sign %s %s: %v", profile, uri, err)
	}
	return iss
}

// issuer returns Sigil's root or active intermediate and its custody signer.
func (c svidCA) issuer(t *testing.T, kind string) (ca.IssuerInfo, crypto.Signer) {
	t.Helper()
	for _, is := range c.ca.Issuers() {
		if is.Kind == kind {
			s, err := c.custody.Signer(context.Background(), is.KeyName)
			if err != nil {
				t.Fatal(err)
			}
			return is, s
		}
	}
	t.Fatalf("no %s issuer", kind)
	return ca.IssuerInfo{}, nil
}

// forge signs a client-auth leaf for uri with the given serial under parent.
func forge(t *testing.T, serial *big.Int, uri string, parent *x509.Certificate, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	u, _ := url.Parse(uri)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: serial, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, newKey(t).Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rogueCA makes a CA certificate with its own key, signed by parent (or
// self-signed when parent is nil).
func rogueCA(t *testing.T, cn string, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	k := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	signer := crypto.Signer(k)
	if parent == nil {
		parent = tmpl
	} else {
		signer = parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, k.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func TestSVIDVerifier(t *testing.T) {
	ctx := context.Background()
	c := newSVIDCA(t)
	const appID, adminID = "spiffe://" + svidTD + "/ns/web/app", "spiffe://" + svidTD + "/ns/admin/ops"
	app := c.issue(t, ca.ProfileWorkload, "", appID)
	serial := app.Certificate.SerialNumber
	root, rootKey := c.issuer(t, ca.KindRoot)
	inter, interKey := c.issuer(t, ca.KindIntermediate)

	// Finding #2: a sub-CA that really chains to Sigil's root (here signed
	// with the root key, as a mis-issued sub-CA or an external root's other
	// sub-CA would be) is not one of Sigil's issuers.
	subCA, subKey := rogueCA(t, "Rogue Sub-CA", root.Certificate, rootKey)
	forgedUnderSub := forge(t, serial, adminID, subCA, subKey)
	selfCA, selfKey := rogueCA(t, "Rogue Root", nil, nil)
	forgedUnderSelf := forge(t, serial, adminID, selfCA, selfKey)
	// Sigil's own intermediate key, but not the certificate it recorded:
	// another identity, and the same identity re-signed (fresh signature).
	resignedAdmin := forge(t, serial, adminID, inter.Certificate, interKey)
	resignedSame := forge(t, serial, appID, inter.Certificate, interKey)

	// A certificate Sigil signed and recorded, but under its root's ID.
	misfiled := forge(t, big.NewInt(0).SetBytes([]byte("misfiled-serial")), adminID, inter.Certificate, interKey)
	if err := c.store.Certificates().Put(ctx, &storage.Certificate{Serial: misfiled.SerialNumber.Text(16), IssuerID: root.ID,
		URIs: []string{adminID}, NotBefore: misfiled.NotBefore, NotAfter: misfiled.NotAfter, Profile: ca.ProfileWorkload,
		DER: misfiled.Raw, Status: storage.CertValid}); err != nil {
		t.Fatal(err)
	}

	clientProfile := c.issue(t, ca.ProfileClient, "ops", adminID)
	otherTD := c.issue(t, ca.ProfileClient, "x", "spiffe://other.test/ns/admin/ops")
	server := c.issue(t, ca.ProfileServer, "svc.sigil.test", "")
	revoked := c.issue(t, ca.ProfileWorkload, "", "spiffe://"+svidTD+"/ns/web/gone")
	if err := c.ca.Revoke(ctx, revoked.Record.Serial, 1); err != nil {
		t.Fatal(err)
	}
	renewed := c.issue(t, ca.ProfileWorkload, "", appID)

	tests := []struct {
		name      string
		presented []*x509.Certificate
		now       time.Time
		want      string // identity, or "" for a rejection
		reason    string // part of the rejection
	}{
		{name: "issued SVID", presented: []*x509.Certificate{app.Certificate}, want: appID},
		{name: "issued SVID with Sigil's chain", presented: append([]*x509.Certificate{app.Certificate}, app.Chain...), want: appID},
		{name: "renewed SVID", presented: []*x509.Certificate{renewed.Certificate}, want: appID},
		// A real SVID sent with a rogue "intermediate" still works: the
		// extra certificates are ignored, not trusted.
		{name: "issued SVID, junk intermediate", presented: []*x509.Certificate{app.Certificate, subCA}, want: appID},
		{name: "forged under a sub-CA of the root, sent as intermediate", presented: []*x509.Certificate{forgedUnderSub, subCA, root.Certificate},
			reason: "could not verify leaf"},
		{name: "forged under a self-signed CA", presented: []*x509.Certificate{forgedUnderSelf, selfCA}, reason: "could not verify leaf"},
		{name: "re-signed by Sigil's intermediate, other identity", presented: []*x509.Certificate{resignedAdmin},
			reason: "not the one Sigil issued"},
		{name: "re-signed by Sigil's intermediate, same identity", presented: []*x509.Certificate{resignedSame},
			reason: "not the one Sigil issued"},
		{name: "record names another issuer", presented: []*x509.Certificate{misfiled}, reason: "was not issued by Sigil's issuer " + root.ID},
		{name: "client profile with a SPIFFE URI", presented: []*x509.Certificate{clientProfile.Certificate}, reason: `profile "client"`},
		{name: "other trust domain", presented: []*x509.Certificate{otherTD.Certificate}, reason: "other.test"},
		{name: "no SPIFFE ID", presented: []*x509.Certificate{server.Certificate}, reason: "no URI SAN"},
		{name: "revoked", presented: []*x509.Certificate{revoked.Certificate}, reason: "revoked"},
		{name: "expired", presented: []*x509.Certificate{app.Certificate}, now: app.Certificate.NotAfter.Add(time.Second), reason: "expired"},
		{name: "not yet valid", presented: []*x509.Certificate{app.Certificate}, now: app.Certificate.NotBefore.Add(-time.Hour), reason: "not yet valid"},
		{name: "no certificate", reason: "no client certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := auth.NewSVIDVerifier(svidTD, c)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.now.IsZero() {
				auth.SetSVIDClock(v, func() time.Time { return tc.now })
			}
			id, err := v.Authenticate(ctx, tc.presented)
			if tc.want != "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if id.Name != tc.want || id.SPIFFEID != tc.want || id.TokenID != "" || len(id.Policies) != 0 {
					t.Fatalf("identity %+v, want %s", id, tc.want)
				}
				return
			}
			if !errors.Is(err, auth.ErrSVIDRejected) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("got %v, %v; want a rejection mentioning %q", id, err, tc.reason)
			}
		})
	}
}

// TestSVIDVerifierNoTrustDomain: without a trust domain no one
// authenticates, even with a certificate Sigil issued.
func TestSVIDVerifierNoTrustDomain(t *testing.T) {
	c := newSVIDCA(t)
	app := c.issue(t, ca.ProfileWorkload, "", "spiffe://"+svidTD+"/ns/web/app")
	v, err := auth.NewSVIDVerifier("", c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Authenticate(context.Background(), []*x509.Certificate{app.Certificate}); !errors.Is(err, auth.ErrSVIDRejected) {
		t.Fatalf("got %v, want a rejection", err)
	}
	if _, err := auth.NewSVIDVerifier("not a domain!", c); err == nil {
		t.Fatal("an invalid trust domain was accepted")
	}
	// Another trust domain than the one the SVID is in.
	v, _ = auth.NewSVIDVerifier("elsewhere.test", c)
	if _, err := v.Authenticate(context.Background(), []*x509.Certificate{app.Certificate}); !errors.Is(err, auth.ErrSVIDRejected) {
		t.Fatalf("got %v, want a rejection", err)
	}
}

// TestSVIDVerifierInventoryFailure: a storage failure is an error, not a
// rejection (the caller answers Internal, not Unauthenticated) and never an
// identity.
func TestSVIDVerifierInventoryFailure(t *testing.T) {
	c := newSVIDCA(t)
	app := c.issue(t, ca.ProfileWorkload, "", "spiffe://"+svidTD+"/ns/web/app")
	v, _ := auth.NewSVIDVerifier(svidTD, c)
	c.store.Close()
	id, err := v.Authenticate(context.Background(), []*x509.Certificate{app.Certificate})
	if err == nil || errors.Is(err, auth.ErrSVIDRejected) || id != nil {
		t.Fatalf("got %v, %v; want an inventory error", id, err)
	}
	t.Log("inventory error:", err)
}
