package bench

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/registration"
	"github.com/miekg/dns"
)

// ACMEZone is the DNS zone the acme scenario enrolls names under; the
// harness's resolver answers every name in it with 127.0.0.1.
const ACMEZone = "bench.test"

// ACMEResponders are the harness's side of http-01: one HTTP server that
// answers every client's challenges (lego's own provider binds a port per
// client, the validation authority dials one), and a DNS server pointing
// the zone at loopback. The server under test is started with ServerArgs.
type ACMEResponders struct {
	http  *http.Server
	dns   *dns.Server
	port  int
	dnsAt string

	mu     sync.Mutex
	tokens map[string]string
}

// StartACMEResponders listens on httpAddr (TCP) and dnsAddr (UDP); empty
// means a free loopback port. A side-by-side run with step-ca needs fixed
// ones: step-ca validates http-01 on port 80 and takes its resolver from
// its command line.
func StartACMEResponders(httpAddr, dnsAddr string) (*ACMEResponders, error) {
	r := &ACMEResponders{tokens: map[string]string{}}
	if httpAddr == "" {
		httpAddr = "127.0.0.1:0"
	}
	if dnsAddr == "" {
		dnsAddr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return nil, fmt.Errorf("http-01 responder on %s: %w", httpAddr, err)
	}
	r.port = l.Addr().(*net.TCPAddr).Port
	r.http = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.http.Serve(l) }()
	pc, err := net.ListenPacket("udp", dnsAddr)
	if err != nil {
		_ = r.http.Close()
		return nil, fmt.Errorf("DNS responder on %s: %w", dnsAddr, err)
	}
	r.dnsAt = pc.LocalAddr().String()
	mux := dns.NewServeMux()
	mux.HandleFunc(ACMEZone+".", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qq := range q.Question {
			if qq.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})
	r.dns = &dns.Server{PacketConn: pc, Handler: mux}
	go func() { _ = r.dns.ActivateAndServe() }()
	return r, nil
}

// ServerArgs point a Sigil server's validation at the responders.
func (r *ACMEResponders) ServerArgs() []string {
	return []string{"--acme-dns-resolver", r.dnsAt, "--acme-http01-port", fmt.Sprint(r.port)}
}

// acmeUnlimitedConfig turns off the server's per-client-IP ACME rate
// limits (new_nonce, new_account, new_order): every benchmark client
// connects from 127.0.0.1, so limits meant for the internet would measure
// the limiter, and step-ca, which the scenario is compared with, has none.
const acmeUnlimitedConfig = `# written by sigil-bench: ACME rate limits off (all clients share one IP)
acme:
  rate_limits:
    new_nonce: {per_second: -1}
    new_account: {per_second: -1}
    new_order: {per_second: -1}
`

// WriteACMEServerConfig writes a server configuration file into dir with
// the ACME rate limits off and returns its path, for `sigil server
// --config`.
func WriteACMEServerConfig(dir string) (string, error) {
	path := filepath.Join(dir, "sigil-bench-acme.yaml")
	if err := os.WriteFile(path, []byte(acmeUnlimitedConfig), 0o600); err != nil {
		return "", fmt.Errorf("acme server config: %w", err)
	}
	return path, nil
}

// Close stops both servers.
func (r *ACMEResponders) Close() error {
	_ = r.dns.Shutdown()
	return r.http.Close()
}

// Present implements lego's challenge.Provider.
func (r *ACMEResponders) Present(_, token, keyAuth string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tokens[token] = keyAuth
	return nil
}

// CleanUp implements lego's challenge.Provider.
func (r *ACMEResponders) CleanUp(_, token, _ string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.tokens, token)
	return nil
}

func (r *ACMEResponders) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	tok := strings.TrimPrefix(req.URL.Path, "/.well-known/acme-challenge/")
	r.mu.Lock()
	ka, ok := r.tokens[tok]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	_, _ = w.Write([]byte(ka))
}

type acmeUser struct {
	key crypto.PrivateKey
	reg *registration.Resource
}

func (u *acmeUser) GetEmail() string                        { return "" }
func (u *acmeUser) GetRegistration() *registration.Resource { return u.reg }
func (u *acmeUser) GetPrivateKey() crypto.PrivateKey        { return u.key }

// ACMEEnroll is the acme scenario: each client is a lego client with its
// own account (registered once, like real clients); one operation is a
// full enrollment of a fresh name: new order, http-01 validation,
// finalize with a new P-256 key, download.
type ACMEEnroll struct {
	target  string
	clients []*lego.Client
	seq     atomic.Int64
	run     string
}

// NewACMEEnroll registers workers accounts at directoryURL of target
// ("sigil", "step-ca"), trusting the CA certificate file caCert.
// requestLimit is lego's OverallRequestLimit: lego waits a second divided
// by it before fetching each authorization (0: lego's default of 18, a
// 55 ms pause in every enrollment, client time in the measured latency).
func NewACMEEnroll(ctx context.Context, target, directoryURL, caCert string, r *ACMEResponders, workers, requestLimit int) (*ACMEEnroll, error) {
	pemData, err := os.ReadFile(caCert)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("%s: no PEM certificate", caCert)
	}
	var tag [4]byte
	_, _ = rand.Read(tag[:])
	s := &ACMEEnroll{target: target, run: fmt.Sprintf("%x", tag)}
	for range workers {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		u := &acmeUser{key: key}
		cfg := lego.NewConfig(u)
		cfg.CADirURL = directoryURL
		cfg.Certificate.KeyType = certcrypto.EC256
		cfg.Certificate.OverallRequestLimit = requestLimit
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 4}}
		c, err := lego.NewClient(cfg)
		if err != nil {
			return nil, fmt.Errorf("lego client: %w", err)
		}
		if err := c.Challenge.SetHTTP01Provider(r); err != nil {
			return nil, err
		}
		if u.reg, err = c.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true}); err != nil {
			return nil, fmt.Errorf("register an ACME account: %w", err)
		}
		s.clients = append(s.clients, c)
	}
	return s, nil
}

func (s *ACMEEnroll) Name() string   { return "acme" }
func (s *ACMEEnroll) Target() string { return s.target }

// Do enrolls one fresh name. lego has no context: a run's end waits for
// enrollments in flight.
func (s *ACMEEnroll) Do(_ context.Context, worker int) error {
	name := fmt.Sprintf("e%d-%s.%s", s.seq.Add(1), s.run, ACMEZone)
	res, err := s.clients[worker].Certificate.Obtain(certificate.ObtainRequest{Domains: []string{name}, Bundle: true})
	if err != nil {
		return fmt.Errorf("enroll %s: %w", name, err)
	}
	if len(res.Certificate) == 0 {
		return fmt.Errorf("enroll %s: no certificate", name)
	}
	return nil
}

func (s *ACMEEnroll) Close() error { return nil }
