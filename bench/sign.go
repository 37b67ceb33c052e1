package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// CSR is one pre-generated certificate request.
type CSR struct {
	PEM  []byte
	DER  []byte
	Name string // the common name and only SAN (DNS name or URI)
}

// CSRPoolOptions shape the pre-generated CSRs.
type CSRPoolOptions struct {
	Keys int // distinct P-256 keys (a small pool: key generation stays out of the run)
	CSRs int // distinct CSRs, cycling over the keys
	// Domain is the DNS suffix of the names ("bench.example.test"); with
	// SPIFFETrustDomain set the CSRs carry spiffe://TD/bench/N URIs instead
	// (the workload profile).
	Domain            string
	SPIFFETrustDomain string
}

// NewCSRPool generates the CSRs a run cycles through.
func NewCSRPool(o CSRPoolOptions) ([]CSR, error) {
	o.Keys = max(o.Keys, 1)
	o.CSRs = max(o.CSRs, o.Keys)
	if o.Domain == "" {
		o.Domain = "bench.example.test"
	}
	keys := make([]*ecdsa.PrivateKey, o.Keys)
	for i := range keys {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("CSR pool: key: %w", err)
		}
		keys[i] = k
	}
	out := make([]CSR, o.CSRs)
	for i := range out {
		tmpl := &x509.CertificateRequest{}
		var name string
		if o.SPIFFETrustDomain != "" {
			u := &url.URL{Scheme: "spiffe", Host: o.SPIFFETrustDomain, Path: fmt.Sprintf("/bench/%d", i)}
			name = u.String()
			tmpl.URIs = []*url.URL{u}
		} else {
			name = fmt.Sprintf("h%d.%s", i, o.Domain)
			tmpl.Subject = pkix.Name{CommonName: name}
			tmpl.DNSNames = []string{name}
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, keys[i%len(keys)])
		if err != nil {
			return nil, fmt.Errorf("CSR pool: %w", err)
		}
		out[i] = CSR{
			DER:  der,
			PEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			Name: name,
		}
	}
	return out, nil
}

// csrCycle hands out CSRs round robin, per worker, without locks.
type csrCycle struct {
	csrs []CSR
	next []int // per worker
}

func newCSRCycle(csrs []CSR, workers int) *csrCycle {
	c := &csrCycle{csrs: csrs, next: make([]int, workers)}
	for w := range c.next {
		c.next[w] = w * len(csrs) / max(workers, 1)
	}
	return c
}

func (c *csrCycle) take(worker int) CSR {
	i := c.next[worker]
	c.next[worker] = (i + 1) % len(c.csrs)
	return c.csrs[i]
}

// SigilConn are the settings to reach a Sigil server's gRPC API.
type SigilConn struct {
	Addr, Token, CACert string
}

// Dial connects over verified TLS with the bearer token on every call.
// When Addr lists several nodes it connects to the first (setup calls);
// the scenarios' pools spread over all of them (dialPool).
func (c SigilConn) Dial() (*grpc.ClientConn, error) {
	c.Addr, _, _ = strings.Cut(c.Addr, ",")
	if c.Addr = strings.TrimSpace(c.Addr); c.Addr == "" {
		return nil, errors.New("no server address (--addr or SIGIL_ADDR)")
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CACert != "" {
		pemData, err := os.ReadFile(c.CACert)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("%s: no PEM certificate", c.CACert)
		}
		tlsCfg.RootCAs = pool
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))}
	if c.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(strings.TrimSpace(c.Token))))
	}
	conn, err := grpc.NewClient(c.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.Addr, err)
	}
	return conn, nil
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// SigilSign is the sign scenario against Sigil: CAService.Sign with a
// pre-generated CSR, one certificate per operation, checked to parse.
type SigilSign struct {
	conns   []*grpc.ClientConn
	clients []sigilv1.CAServiceClient
	profile string
	csrs    *csrCycle
}

// NewSigilSign dials conns connections (clients share them round robin,
// as a fleet of clients behind few hosts would; spread over the nodes when
// c.Addr lists several) and prepares the scenario.
func NewSigilSign(c SigilConn, profile string, csrs []CSR, workers, conns int) (*SigilSign, error) {
	s := &SigilSign{profile: profile, csrs: newCSRCycle(csrs, workers)}
	var err error
	if s.conns, err = dialPool(c, workers, conns); err != nil {
		return nil, err
	}
	for _, cc := range s.conns {
		s.clients = append(s.clients, sigilv1.NewCAServiceClient(cc))
	}
	return s, nil
}

func (s *SigilSign) Name() string   { return "sign" }
func (s *SigilSign) Target() string { return "sigil" }

func (s *SigilSign) Do(ctx context.Context, worker int) error {
	csr := s.csrs.take(worker)
	resp, err := s.clients[worker%len(s.clients)].Sign(ctx, &sigilv1.SignRequest{Csr: csr.DER, Profile: s.profile})
	if err != nil {
		return fmt.Errorf("sign %s: %w", csr.Name, err)
	}
	return checkLeafPEM([]byte(resp.GetCertificatePem()))
}

// checkLeafPEM makes sure an answer holds a certificate: a server that
// answers fast with garbage must not score.
func checkLeafPEM(p []byte) error {
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "CERTIFICATE" {
		return errors.New("answer holds no PEM certificate")
	}
	if _, err := x509.ParseCertificate(b.Bytes); err != nil {
		return fmt.Errorf("answer's certificate: %w", err)
	}
	return nil
}

func (s *SigilSign) Close() error {
	return closeAll(s.conns)
}
