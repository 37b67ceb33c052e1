package ca

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"net/url"
	"sort"
	"testing"
)

// stdTBS is the TBSCertificate x509.CreateCertificate builds for tmpl
// under parent, signed by a throwaway key of key's type (what lint did for
// every certificate before encodeTBS).
func stdTBS(t *testing.T, tmpl, parent *x509.Certificate, pub crypto.PublicKey, throwaway crypto.Signer) ([]byte, error) {
	t.Helper()
	fake := *parent
	fake.PublicKey = throwaway.Public()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &fake, pub, throwaway)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c.RawTBSCertificate, nil
}

// encodeTBS must write, byte for byte, what x509.CreateCertificate writes
// for every template end-entity issuance makes: every built-in non-CA
// profile, every issuer key type, every subject key type, every kind of
// name, with and without a subject. Templates outside its subset must be
// refused (lint then uses x509.CreateCertificate), and lint's certificate
// must carry the TBS the standard library would build, the issuer's
// algorithm, and be signable by signTBS into a certificate that verifies.
func TestEncodeTBSMatchesCreateCertificate(t *testing.T) {
	e := newEnv(t, testConfig(), true)
	issuers := issuerKeys(t)
	// Subject keys of their own (an issuer's key as the subject's would
	// make the key identifiers equal and hide a swap).
	other := issuerKeys(t)
	subjects := []crypto.Signer{other[0].key, other[1].key, other[3].key, other[4].key}
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	nameSets := []Names{
		{CommonName: "a.example.test", DNSNames: []string{"a.example.test", "b.example.test"}},
		{DNSNames: []string{"only-san.example.test"}},
		{CommonName: "other", DNSNames: []string{"x.example.test"}, IPs: []net.IP{net.ParseIP("10.1.2.3"), net.ParseIP("fd00::1")}},
		{IPs: []net.IP{net.ParseIP("192.0.2.7")}},
		{URIs: []*url.URL{mustURL("spiffe://example.org/ns/a/sa/b")}},
		{CommonName: "client", Emails: []string{"a@example.test"}, DNSNames: []string{"c.example.test"}, URIs: []*url.URL{mustURL("https://x.example.test/p?q=1")}},
		{CommonName: "long-" + string(bytes.Repeat([]byte("a"), 120)), DNSNames: []string{"long.example.test"}},
	}
	var profiles []string
	for name, p := range e.ca.profiles {
		if !p.cfg.IsCA {
			profiles = append(profiles, name)
		}
	}
	sort.Strings(profiles)
	if len(profiles) < 3 {
		t.Fatalf("only %d end-entity profiles: %v", len(profiles), profiles)
	}
	is := e.ca.activeIssuer()
	compared := 0
	for _, iss := range issuers {
		t.Run(iss.name, func(t *testing.T) {
			parent := lintSignParent(t, iss.key)
			shape, err := e.ca.lintShape(iss.key.Public())
			if err != nil {
				t.Fatal(err)
			}
			for _, pname := range profiles {
				p := e.ca.profiles[pname]
				for _, sub := range subjects {
					for _, names := range nameSets {
						csr := &x509.CertificateRequest{Subject: pkix.Name{CommonName: names.CommonName}, PublicKey: sub.Public()}
						tmpl, _, err := e.ca.template(p, is, csr, names, 0, nil)
						if err != nil {
							t.Fatal(err)
						}
						want, err := stdTBS(t, tmpl, parent, sub.Public(), shape.key)
						if err != nil {
							t.Fatal(err)
						}
						got, err := encodeTBS(tmpl, parent, sub.Public(), shape.alg)
						if err != nil {
							t.Fatalf("%s %T %v: %v", pname, sub.Public(), names.All(), err)
						}
						if !bytes.Equal(got, want) {
							t.Fatalf("%s %T %v: encodeTBS differs from x509.CreateCertificate\n got %x\nwant %x", pname, sub.Public(), names.All(), got, want)
						}
						compared++
					}
				}
			}
			// lint's certificate: the same TBS, the issuer's algorithm
			// outside it, a signature the length of a real one; signTBS
			// turns it into the certificate the standard library makes.
			// (The BRs allow no Ed25519 signatures: lint refuses them, as
			// it always did.)
			if iss.name == "Ed25519" {
				return
			}
			sub := subjects[0]
			names := Names{DNSNames: []string{"leaf.example.test"}}
			csr := &x509.CertificateRequest{PublicKey: sub.Public()}
			tmpl, _, err := e.ca.template(e.ca.profiles[ProfileServer], is, csr, names, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			lintDER, err := e.ca.lint(tmpl, parent, sub.Public(), iss.key.Public())
			if err != nil {
				t.Fatal(err)
			}
			linted, err := x509.ParseCertificate(lintDER)
			if err != nil {
				t.Fatal(err)
			}
			want, err := stdTBS(t, tmpl, parent, sub.Public(), shape.key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(linted.RawTBSCertificate, want) {
				t.Fatal("lint's TBS differs from x509.CreateCertificate's")
			}
			var outer signedCert
			if _, err := asn1.Unmarshal(lintDER, &outer); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(outer.Algorithm.FullBytes, shape.alg) || len(outer.Signature.Bytes) < len(shape.sig)-4 {
				t.Fatalf("lint certificate: algorithm %x, signature %d bytes", outer.Algorithm.FullBytes, len(outer.Signature.Bytes))
			}
			der, cert, err := signTBS(lintDER, parent, iss.key)
			if err != nil {
				t.Fatal(err)
			}
			std, err := x509.CreateCertificate(rand.Reader, tmpl, parent, sub.Public(), iss.key)
			if err != nil {
				t.Fatal(err)
			}
			stdCert, err := x509.ParseCertificate(std)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cert.RawTBSCertificate, stdCert.RawTBSCertificate) || cert.SignatureAlgorithm != stdCert.SignatureAlgorithm || !bytes.Equal(cert.Raw, der) {
				t.Fatal("signed certificate differs from x509.CreateCertificate's")
			}
			if err := cert.CheckSignatureFrom(parent); err != nil {
				t.Fatal(err)
			}
		})
	}
	if compared == 0 {
		t.Fatal("nothing compared")
	}
}

// Templates encodeTBS does not handle are refused (lint then builds them
// with x509.CreateCertificate and still lints the bytes it signs), and
// lint's fallback gives the same TBS as the standard library.
func TestEncodeTBSRefusesTheRest(t *testing.T) {
	e := newEnv(t, testConfig(), false)
	key := mustKey(t, elliptic.P256())
	parent := lintSignParent(t, key)
	shape, err := e.ca.lintShape(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	_, ipnet, _ := net.ParseCIDR("10.0.0.0/8")
	tests := []struct {
		name string
		mod  func(c *x509.Certificate)
	}{
		{"CA", func(c *x509.Certificate) { c.IsCA = true; c.KeyUsage = x509.KeyUsageCertSign }},
		{"path length", func(c *x509.Certificate) { c.IsCA = true; c.MaxPathLenZero = true }},
		{"extra extension", func(c *x509.Certificate) {
			c.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}, Value: asn1.NullBytes}}
		}},
		{"name constraints", func(c *x509.Certificate) { c.IsCA = true; c.PermittedIPRanges = []*net.IPNet{ipnet} }},
		{"policies", func(c *x509.Certificate) { c.PolicyIdentifiers = []asn1.ObjectIdentifier{{1, 2, 3}} }},
		{"unknown EKU", func(c *x509.Certificate) { c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 2, 3, 4}} }},
		{"other EKU", func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageIPSECUser) }},
		{"signature algorithm", func(c *x509.Certificate) { c.SignatureAlgorithm = x509.ECDSAWithSHA384 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := lintSignLeaf()
			tc.mod(tmpl)
			if _, err := encodeTBS(tmpl, parent, key.Public(), shape.alg); !errors.Is(err, errTBSUnsupported) {
				t.Fatalf("encodeTBS: got %v, want errTBSUnsupported", err)
			}
			want, err := stdTBS(t, tmpl, parent, key.Public(), shape.key)
			if err != nil {
				t.Fatal(err)
			}
			// lint refuses on findings; what matters here is the bytes.
			der, err := e.ca.lint(tmpl, parent, key.Public(), key.Public())
			if err != nil {
				var ce *Error
				if !errors.As(err, &ce) || ce.Kind != KindLint {
					t.Fatal(err)
				}
				return
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(c.RawTBSCertificate, want) {
				t.Fatal("lint's fallback TBS differs from x509.CreateCertificate's")
			}
		})
	}
	// A name that is not IA5 fails both ways alike.
	tmpl := lintSignLeaf()
	tmpl.DNSNames = []string{"é.example.test"}
	if _, err := encodeTBS(tmpl, parent, key.Public(), shape.alg); err == nil {
		t.Fatal("encodeTBS accepted a non-IA5 name")
	}
	if _, err := stdTBS(t, tmpl, parent, key.Public(), shape.key); err == nil {
		t.Fatal("x509.CreateCertificate accepted a non-IA5 name")
	}
}
