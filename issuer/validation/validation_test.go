package validation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func localhostLookup(context.Context, string) ([]net.IP, error) {
	return []net.IP{net.IPv4(127, 0, 0, 1)}, nil
}

func wantType(t *testing.T, err error, typ string) {
	t.Helper()
	if typ == "" {
		if err != nil {
			t.Fatalf("want success, got %v", err)
		}
		return
	}
	var ve *Error
	if !errors.As(err, &ve) || ve.Type != typ {
		t.Fatalf("want %s error, got %v", typ, err)
	}
}

// listen returns a listener on a free 127.0.0.1 port and the port.
func listen(t *testing.T) (net.Listener, int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, l.Addr().(*net.TCPAddr).Port
}

func serveHTTP(t *testing.T, h http.Handler) int {
	t.Helper()
	l, port := listen(t)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return port
}

func TestHTTP01(t *testing.T) {
	const token, keyAuth = "tok123", "tok123.thumb"
	other, otherPort := listen(t)
	other.Close() // nothing listens here
	var port int
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/acme-challenge/tok123", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, keyAuth+"\n")
	})
	mux.HandleFunc("/.well-known/acme-challenge/wrong", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "wrong.thumb")
	})
	mux.HandleFunc("/.well-known/acme-challenge/big", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Repeat("x", 10000))
	})
	mux.HandleFunc("/.well-known/acme-challenge/redir", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://b.example.test:"+strconv.Itoa(port)+"/.well-known/acme-challenge/tok123", http.StatusFound)
	})
	mux.HandleFunc("/.well-known/acme-challenge/redir-port", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://a.example.test:"+strconv.Itoa(otherPort)+"/x", http.StatusFound)
	})
	mux.HandleFunc("/.well-known/acme-challenge/redir-ftp", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "ftp://a.example.test/x", http.StatusFound)
	})
	mux.HandleFunc("/.well-known/acme-challenge/loop", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/.well-known/acme-challenge/loop", http.StatusFound)
	})
	port = serveHTTP(t, mux)
	va, err := New(Config{HTTP01Port: port, LookupIP: localhostLookup, Timeout: 5 * time.Second, AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token, want string
		ident       string
	}{
		{"tok123", "", "dns"},
		{"tok123", "", "ip"},
		{"wrong", "incorrectResponse", "dns"},
		{"missing", "unauthorized", "dns"},
		{"big", "unauthorized", "dns"},
		{"redir", "", "dns"},
		{"redir-port", "connection", "dns"},
		{"redir-ftp", "connection", "dns"},
		{"loop", "connection", "dns"},
	} {
		t.Run(tc.token+"-"+tc.ident, func(t *testing.T) {
			req := Request{IdentifierType: IdentifierDNS, Value: "a.example.test", Challenge: HTTP01, Token: tc.token, KeyAuthorization: keyAuth}
			if tc.ident == "ip" {
				req.IdentifierType, req.Value = IdentifierIP, "127.0.0.1"
			}
			wantType(t, va.Validate(t.Context(), req), tc.want)
		})
	}
	t.Run("NothingListening", func(t *testing.T) {
		va2, _ := New(Config{HTTP01Port: otherPort, LookupIP: localhostLookup, AllowLoopback: true})
		wantType(t, va2.Validate(t.Context(), Request{IdentifierType: IdentifierDNS, Value: "a.example.test", Challenge: HTTP01, Token: token, KeyAuthorization: keyAuth}), "connection")
	})
	t.Run("SlowServerBoundedByTimeout", func(t *testing.T) {
		slow := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}))
		va3, _ := New(Config{HTTP01Port: slow, LookupIP: localhostLookup, Timeout: 300 * time.Millisecond, AllowLoopback: true})
		start := time.Now()
		wantType(t, va3.Validate(t.Context(), Request{IdentifierType: IdentifierDNS, Value: "a.example.test", Challenge: HTTP01, Token: token, KeyAuthorization: keyAuth}), "connection")
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("validation took %v", d)
		}
	})
}

// alpnCert builds a tls-alpn-01 certificate.
func alpnCert(t *testing.T, dnsNames []string, ips []net.IP, digest []byte, critical bool) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	val, _ := asn1.Marshal(digest)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "acme"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: dnsNames, IPAddresses: ips,
		ExtraExtensions: []pkix.Extension{{Id: oidACMEIdentifier, Critical: critical, Value: val}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func TestTLSALPN01(t *testing.T) {
	const keyAuth = "tok.thumb"
	good := sha256.Sum256([]byte(keyAuth))
	var mu sync.Mutex
	var cert tls.Certificate
	var sawSNI string
	l, port := listen(t)
	tl := tls.NewListener(l, &tls.Config{
		NextProtos: []string{ALPNProto},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			mu.Lock()
			defer mu.Unlock()
			sawSNI = hello.ServerName
			c := cert
			return &c, nil
		},
	})
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
			}()
		}
	}()
	va, err := New(Config{TLSALPN01Port: port, LookupIP: localhostLookup, Timeout: 5 * time.Second, AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	req := Request{IdentifierType: IdentifierDNS, Value: "a.example.test", Challenge: TLSALPN01, Token: "tok", KeyAuthorization: keyAuth}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		req  Request
		want string
	}{
		{"ok", alpnCert(t, []string{"a.example.test"}, nil, good[:], true), req, ""},
		{"wrong digest", alpnCert(t, []string{"a.example.test"}, nil, make([]byte, 32), true), req, "incorrectResponse"},
		{"not critical", alpnCert(t, []string{"a.example.test"}, nil, good[:], false), req, "unauthorized"},
		{"two SANs", alpnCert(t, []string{"a.example.test", "b.example.test"}, nil, good[:], true), req, "unauthorized"},
		{"other name", alpnCert(t, []string{"b.example.test"}, nil, good[:], true), req, "unauthorized"},
		{"ip", alpnCert(t, nil, []net.IP{net.IPv4(127, 0, 0, 1)}, good[:], true),
			Request{IdentifierType: IdentifierIP, Value: "127.0.0.1", Challenge: TLSALPN01, Token: "tok", KeyAuthorization: keyAuth}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			cert = tc.cert
			mu.Unlock()
			wantType(t, va.Validate(t.Context(), tc.req), tc.want)
			mu.Lock()
			defer mu.Unlock()
			wantSNI := tc.req.Value
			if tc.req.IdentifierType == IdentifierIP {
				wantSNI = "1.0.0.127.in-addr.arpa"
			}
			if sawSNI != wantSNI {
				t.Fatalf("SNI %q, want %q", sawSNI, wantSNI)
			}
		})
	}
}

// dnsServer is a tiny authoritative-looking test resolver.
type dnsServer struct {
	mu    sync.Mutex
	txt   map[string][]string
	caa   map[string][]*dns.CAA
	addrs map[string][]net.IP
}

func (d *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	d.mu.Lock()
	defer d.mu.Unlock()
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 60, Rrtype: q.Qtype}
	switch q.Qtype {
	case dns.TypeTXT:
		for _, v := range d.txt[name] {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
		}
	case dns.TypeA, dns.TypeAAAA:
		for _, ip := range d.addrs[name] {
			if v4 := ip.To4(); v4 != nil && q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: v4})
			} else if v4 == nil && q.Qtype == dns.TypeAAAA {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
			}
		}
	case dns.TypeCAA:
		for _, c := range d.caa[name] {
			cc := *c
			cc.Hdr = hdr
			m.Answer = append(m.Answer, &cc)
		}
	}
	if strings.HasSuffix(name, "servfail.example.test.") {
		m.Rcode = dns.RcodeServerFailure
	}
	_ = w.WriteMsg(m)
}

func startDNS(t *testing.T, h *dnsServer) string {
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

func TestDNS01AndCAA(t *testing.T) {
	const keyAuth = "tok.thumb"
	h := &dnsServer{
		txt: map[string][]string{
			"_acme-challenge.a.example.test.":          {"unrelated", KeyAuthorizationDigest(keyAuth)},
			"_acme-challenge.b.example.test.":          {"wrong"},
			"_acme-challenge.ok.forbid.example.test.":  {KeyAuthorizationDigest(keyAuth)},
			"_acme-challenge.bad.forbid.example.test.": {"wrong"},
		},
		addrs: map[string][]net.IP{"both.example.test.": {net.ParseIP("2001:db8::7"), net.ParseIP("192.0.2.7")}},
		caa: map[string][]*dns.CAA{
			"example.test.":        {{Tag: "issue", Value: "sigil.test; account=1"}, {Tag: "issuewild", Value: ";"}},
			"forbid.example.test.": {{Tag: "issue", Value: "other-ca.test"}},
			"crit.example.test.":   {{Flag: 128, Tag: "tbs", Value: "x"}, {Tag: "issue", Value: "sigil.test"}},
			"iodef.example.test.":  {{Tag: "iodef", Value: "mailto:x@example.test"}},
		},
	}
	addr := startDNS(t, h)
	va, err := New(Config{DNSResolver: addr, CAAIdentities: []string{"sigil.test"}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dns01 := func(name string) Request {
		return Request{IdentifierType: IdentifierDNS, Value: name, Challenge: DNS01, Token: "tok", KeyAuthorization: keyAuth}
	}
	wantType(t, va.Validate(t.Context(), dns01("a.example.test")), "")
	wantType(t, va.Validate(t.Context(), dns01("b.example.test")), "incorrectResponse")
	wantType(t, va.Validate(t.Context(), dns01("c.example.test")), "unauthorized")
	wantType(t, va.Validate(t.Context(), dns01("servfail.example.test")), "dns")
	// The challenge and CAA run side by side: with the challenge passed a
	// CAA refusal is the error; with it failed, the challenge's error is.
	wantType(t, va.Validate(t.Context(), dns01("ok.forbid.example.test")), "caa")
	wantType(t, va.Validate(t.Context(), dns01("bad.forbid.example.test")), "incorrectResponse")

	// CAA, checked on its own against the same resolver.
	for _, tc := range []struct {
		name     string
		wildcard bool
		want     string
	}{
		{"a.example.test", false, ""},           // inherits example.test: issue sigil.test
		{"a.example.test", true, "caa"},         // issuewild ";" forbids wildcards
		{"forbid.example.test", false, "caa"},   // another CA only
		{"x.forbid.example.test", false, "caa"}, // climbs to forbid.example.test
		{"crit.example.test", false, "caa"},     // unknown critical tag
		{"iodef.example.test", false, ""},       // no issue property: permitted
		{"unrelated.test", false, ""},           // no CAA anywhere
		{"servfail.example.test", false, "caa"},
	} {
		err := va.checkCAA(t.Context(), Request{IdentifierType: IdentifierDNS, Value: tc.name, Wildcard: tc.wildcard})
		if tc.want == "" && err != nil || tc.want != "" && err == nil {
			t.Errorf("CAA %s (wildcard %v): got %v, want %q", tc.name, tc.wildcard, err, tc.want)
		} else if err != nil {
			wantType(t, err, tc.want)
		}
	}
	// IP identifiers have no CAA.
	if err := va.checkCAA(t.Context(), Request{IdentifierType: IdentifierIP, Value: "192.0.2.1"}); err != nil {
		t.Fatal(err)
	}
	// Address lookups go through the resolver too when LookupIP is unset.
	if _, err := va.lookupIP(t.Context(), "none.example.test"); err == nil {
		t.Fatal("lookup of a name without addresses succeeded")
	}
	// A and AAAA are asked at once; the IPv4 addresses come first.
	ips, err := va.lookupIP(t.Context(), "both.example.test")
	if err != nil || len(ips) != 2 || !ips[0].Equal(net.ParseIP("192.0.2.7")) || !ips[1].Equal(net.ParseIP("2001:db8::7")) {
		t.Fatalf("lookup of a name with A and AAAA = %v, %v; want [192.0.2.7 2001:db8::7]", ips, err)
	}
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{HTTP01Port: 70000}); err == nil {
		t.Fatal("bad port accepted")
	}
	if _, err := New(Config{DNSResolver: "no-port"}); err == nil {
		t.Fatal("resolver without port accepted")
	}
	va, err := New(Config{})
	if err != nil || va.cfg.HTTP01Port != 80 || va.cfg.TLSALPN01Port != 443 {
		t.Fatalf("defaults: %+v %v", va, err)
	}
}
