package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/issuer/validation"
)

// TestCNOnlyCSRAndLifetime: a CSR naming its identifier only in the
// common name is accepted (RFC 8555 §7.4) and the certificate lists it as
// a SAN; the default profile issues for DefaultCertLifetime (45 days, above
// clients' 30-day renewal point), the short-lived profile only when asked.
func TestCNOnlyCSRAndLifetime(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	s := newSigner(t)
	e.register(s, e.base)
	for _, tc := range []struct {
		name, profile string
		life          time.Duration
	}{
		{"cn-only.example.test", "", DefaultCertLifetime},
		{"short.example.test", "shortlived", 7 * 24 * time.Hour},
	} {
		payload := map[string]any{"identifiers": []Identifier{{Type: "dns", Value: tc.name}}}
		if tc.profile != "" {
			payload["profile"] = tc.profile
		}
		loc, o := e.newOrder(s, e.base, payload)
		e.validate(s, o, validation.HTTP01)
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: tc.name}}, k)
		if err != nil {
			t.Fatal(err)
		}
		if r := e.post(s, o.Finalize, map[string]any{"csr": b64(der)}); r.status != http.StatusOK {
			t.Fatalf("%s: finalize of a CN-only CSR: %d %s", tc.name, r.status, r.body)
		}
		e.post(s, loc, nil).json(t, &o)
		r := e.post(s, o.Certificate, nil)
		blk, _ := pem.Decode(r.body)
		if blk == nil {
			t.Fatalf("%s: certificate: %d %s", tc.name, r.status, r.body)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(cert.DNSNames) != 1 || cert.DNSNames[0] != tc.name {
			t.Errorf("%s: SANs %v, want the common name as the only SAN", tc.name, cert.DNSNames)
		}
		if got := cert.NotAfter.Sub(cert.NotBefore); got < tc.life-time.Hour || got > tc.life+time.Hour {
			t.Errorf("%s: lifetime %v, want %v", tc.name, got, tc.life)
		}
	}
}

// TestPendingOrdersRetryAfter: the per-account pending-orders limit says
// when a slot frees (the first pending order's expiry), not a fixed 60 s.
func TestPendingOrdersRetryAfter(t *testing.T) {
	e := newEnv(t, &fakeVA{}, func(c *Config) {
		c.Provisioners[0].MaxPendingOrders = 1
		c.OrderLifetime = 2 * time.Hour
	})
	s := newSigner(t)
	e.register(s, e.base)
	e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "p1.example.test"}}})
	r := e.post(s, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "p2.example.test"}}})
	wantProblem(t, r, http.StatusTooManyRequests, "rateLimited")
	secs, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || secs < 7000 || secs > 7200 {
		t.Fatalf("Retry-After %q, want about 2h (7200 s) from the pending order's expiry", r.header.Get("Retry-After"))
	}
}
