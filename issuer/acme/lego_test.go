package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	legochallenge "github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/challenge/http01"
	"github.com/go-acme/lego/v4/challenge/tlsalpn01"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
	"github.com/miekg/dns"
	"golang.org/x/crypto/ocsp"

	"github.com/sigil-ca/sigil/issuer/validation"
)

type legoUser struct {
	key crypto.PrivateKey
	reg *registration.Resource
}

func (u *legoUser) GetEmail() string                        { return "ops@example.test" }
func (u *legoUser) GetRegistration() *registration.Resource { return u.reg }
func (u *legoUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// testDNS answers TXT from a mutable map and CAA from a fixed one.
type testDNS struct {
	mu  sync.Mutex
	txt map[string][]string
	caa map[string][]*dns.CAA
}

func (d *testDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 0, Rrtype: q.Qtype}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch q.Qtype {
	case dns.TypeTXT:
		for _, v := range d.txt[strings.ToLower(q.Name)] {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
		}
	case dns.TypeCAA:
		for _, c := range d.caa[strings.ToLower(q.Name)] {
			cc := *c
			cc.Hdr = hdr
			m.Answer = append(m.Answer, &cc)
		}
	}
	_ = w.WriteMsg(m)
}

// Present and CleanUp make testDNS a lego dns-01 provider.
func (d *testDNS) Present(domain, _, keyAuth string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	fqdn := "_acme-challenge." + domain + "."
	d.txt[fqdn] = append(d.txt[fqdn], validation.KeyAuthorizationDigest(keyAuth))
	return nil
}

func (d *testDNS) CleanUp(domain, _, _ string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.txt, "_acme-challenge."+domain+".")
	return nil
}

func (d *testDNS) Timeout() (time.Duration, time.Duration) {
	return 10 * time.Second, 50 * time.Millisecond
}

func startTestDNS(t testing.TB, h dns.Handler) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func parsePEMCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// opensslVerify checks the bundle with openssl when it is installed.
func opensslVerify(t *testing.T, e *env, bundle []byte) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Log("openssl not installed; chain verified with crypto/x509 only")
		return
	}
	dir := t.TempDir()
	certs := parsePEMCerts(t, bundle)
	write := func(name string, cs ...*x509.Certificate) string {
		var b []byte
		for _, c := range cs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	root := write("root.pem", e.ca.Root())
	chain := write("chain.pem", certs[1:]...)
	leaf := write("leaf.pem", certs[0])
	out, err := exec.Command("openssl", "verify", "-CAfile", root, "-untrusted", chain, "-purpose", "sslserver", leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}

func (e *env) ocspStatus(t *testing.T, leaf *x509.Certificate, issuer *x509.Certificate) int {
	t.Helper()
	req, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	der, err := e.ca.OCSP(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ocsp.ParseResponseForCert(der, leaf, issuer)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Status
}

// TestLegoEndToEnd drives the server with the lego library: register,
// http-01 for two names, download and verify, ARI and renewal with
// replaces, revocation seen in OCSP; then dns-01 (with a wildcard) and
// tls-alpn-01, revocation by the certificate's key, and CAA refusing.
func TestLegoEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	httpPort, alpnPort := freePort(t), freePort(t)
	zone := &testDNS{txt: map[string][]string{}, caa: map[string][]*dns.CAA{
		"example.test.":        {{Tag: "issue", Value: "sigil.test"}},
		"forbid.example.test.": {{Tag: "issue", Value: "another-ca.test"}},
	}}
	dnsAddr := startTestDNS(t, zone)
	va, err := validation.New(validation.Config{
		HTTP01Port: httpPort, TLSALPN01Port: alpnPort, DNSResolver: dnsAddr,
		LookupIP: func(context.Context, string) ([]net.IP, error) {
			return []net.IP{net.IPv4(127, 0, 0, 1)}, nil
		},
		CAAIdentities: []string{"sigil.test"}, Timeout: 10 * time.Second,
		AllowLoopback: true, // the challenge servers answer on 127.0.0.1
	})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, va, nil)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	user := &legoUser{key: key}
	cfg := lego.NewConfig(user)
	cfg.CADirURL = e.base + "/directory"
	cfg.HTTPClient = e.ts.Client()
	cfg.HTTPClient.Timeout = 30 * time.Second
	cfg.Certificate.KeyType = certcrypto.EC256
	client, err := lego.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Challenge.SetHTTP01Provider(http01.NewProviderServer("127.0.0.1", strconv.Itoa(httpPort))); err != nil {
		t.Fatal(err)
	}
	user.reg, err = client.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true})
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	names := []string{"a.example.test", "b.example.test"}
	res, err := client.Certificate.Obtain(certificate.ObtainRequest{Domains: names, Bundle: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("http-01 enrollment for two names took %v", time.Since(start))
	certs := parsePEMCerts(t, res.Certificate)
	leaf := certs[0]
	if !slicesEqual(leaf.DNSNames, names) {
		t.Fatalf("names %v", leaf.DNSNames)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.rootPool(), Intermediates: inter, DNSName: "b.example.test"}); err != nil {
		t.Fatal(err)
	}
	opensslVerify(t, e, res.Certificate)

	// ARI, then renewal replacing the first certificate.
	ri, err := client.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: leaf})
	if err != nil {
		t.Fatal(err)
	}
	if !ri.SuggestedWindow.Start.After(leaf.NotBefore) || !ri.SuggestedWindow.End.Before(leaf.NotAfter) || ri.RetryAfter == 0 {
		t.Fatalf("renewal info %+v", ri)
	}
	certID, err := certificate.MakeARICertID(leaf)
	if err != nil || certID != CertID(leaf) {
		t.Fatalf("certID %q vs ours %q: %v", certID, CertID(leaf), err)
	}
	res2, err := client.Certificate.Obtain(certificate.ObtainRequest{Domains: names, Bundle: true, ReplacesCertID: certID})
	if err != nil {
		t.Fatal(err)
	}
	leaf2 := parsePEMCerts(t, res2.Certificate)[0]
	if leaf2.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("renewal returned the same certificate")
	}
	// A second replacement gets 409 alreadyReplaced (order_test.go checks
	// the problem); lego then retries without replaces, as RFC 9773 allows.

	// Revoke the first with the account key; OCSP says revoked.
	issuer := certs[1]
	if st := e.ocspStatus(t, leaf, issuer); st != ocsp.Good {
		t.Fatalf("OCSP before revocation: %d", st)
	}
	reason := uint(4)
	if err := client.Certificate.RevokeWithReason(res.Certificate, &reason); err != nil {
		t.Fatal(err)
	}
	if st := e.ocspStatus(t, leaf, issuer); st != ocsp.Revoked {
		t.Fatalf("OCSP after revocation: %d", st)
	}

	// dns-01, including a wildcard.
	client.Challenge.Remove(legochallenge.HTTP01)
	if err := client.Challenge.SetDNS01Provider(zone, dns01.AddRecursiveNameservers([]string{dnsAddr}),
		dns01.WrapPreCheck(func(string, string, string, dns01.PreCheckFunc) (bool, error) { return true, nil })); err != nil {
		t.Fatal(err)
	}
	res3, err := client.Certificate.Obtain(certificate.ObtainRequest{Domains: []string{"w.example.test", "*.w.example.test"}, Bundle: true})
	if err != nil {
		t.Fatal(err)
	}
	if l := parsePEMCerts(t, res3.Certificate)[0]; !slicesEqual(l.DNSNames, []string{"w.example.test", "*.w.example.test"}) && !slicesEqual(l.DNSNames, []string{"*.w.example.test", "w.example.test"}) {
		t.Fatalf("dns-01 names %v", l.DNSNames)
	}

	// tls-alpn-01.
	client.Challenge.Remove(legochallenge.DNS01)
	if err := client.Challenge.SetTLSALPN01Provider(tlsalpn01.NewProviderServer("127.0.0.1", strconv.Itoa(alpnPort))); err != nil {
		t.Fatal(err)
	}
	res4, err := client.Certificate.Obtain(certificate.ObtainRequest{Domains: []string{"c.example.test"}, Bundle: true})
	if err != nil {
		t.Fatal(err)
	}

	// Revoke by the certificate's own key, without the account.
	blk, _ := pem.Decode(res4.PrivateKey)
	ck, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leaf4 := parsePEMCerts(t, res4.Certificate)[0]
	r := e.post(&signer{key: ck, alg: "ES256"}, e.base+"/revoke-cert", map[string]any{"certificate": b64(leaf4.Raw)})
	if r.status != http.StatusOK {
		t.Fatalf("revoke by certificate key: %d %s", r.status, r.body)
	}

	// CAA forbidding Sigil: the order fails and nothing is issued.
	client.Challenge.Remove(legochallenge.TLSALPN01)
	if err := client.Challenge.SetHTTP01Provider(http01.NewProviderServer("127.0.0.1", strconv.Itoa(httpPort))); err != nil {
		t.Fatal(err)
	}
	before := len(listAllCerts(t, e))
	_, err = client.Certificate.Obtain(certificate.ObtainRequest{Domains: []string{"x.forbid.example.test"}})
	if err == nil || !strings.Contains(err.Error(), "caa") {
		t.Fatalf("CAA-forbidden name: %v", err)
	}
	if after := len(listAllCerts(t, e)); after != before {
		t.Fatalf("%d certificates issued despite CAA", after-before)
	}
}

func listAllCerts(t *testing.T, e *env) []string {
	t.Helper()
	list, _, err := e.store.Certificates().List(t.Context(), storageFilterAll())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range list {
		out = append(out, c.Serial)
	}
	return out
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
