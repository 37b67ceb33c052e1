package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// templatesTestCert issues a certificate from parent (self-signed when
// parent is nil).
func templatesTestCert(t *testing.T, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// TestNodeConnFollowsRenewedSVID: the renderer's connection is the agent's
// current one, so after the node SVID renews (and the agent dials anew)
// its calls present the new certificate, against a real gRPC server that
// requires client certificates.
func TestNodeConnFollowsRenewedSVID(t *testing.T) {
	ca, caKey := templatesTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srvCert, srvKey := templatesTestCert(t, &x509.Certificate{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	node := &url.URL{Scheme: "spiffe", Host: "t.test", Path: "/node/a"}
	nodeSVID := func() *tls.Certificate {
		c, k := templatesTestCert(t, &x509.Certificate{URIs: []*url.URL{node}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
		return &tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k}
	}

	var mu sync.Mutex
	var seen []string
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				mu.Lock()
				seen = append(seen, ti.State.PeerCertificates[0].SerialNumber.String())
				mu.Unlock()
			}
		}
		return h(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey}},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})), grpc.UnaryInterceptor(record))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Stop()

	a := &Agent{cfg: Config{Server: l.Addr().String()}, log: slog.New(slog.DiscardHandler), node: &nodeIdentity{dir: t.TempDir()}}
	a.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, GetClientCertificate: a.node.clientCertificate}
	first, second := nodeSVID(), nodeSVID()
	if err := a.node.set(first); err != nil {
		t.Fatal(err)
	}
	if err := a.dial(); err != nil {
		t.Fatal(err)
	}
	defer a.close()
	hc := healthpb.NewHealthClient(nodeConn{a})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("call with the first node SVID: %v", err)
	}
	// Renewal: the new SVID becomes current and the agent dials anew (as
	// syncOnce does); the same nodeConn now presents it.
	if err := a.node.set(second); err != nil {
		t.Fatal(err)
	}
	if err := a.dial(); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("call after the renewal: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{first.Leaf.SerialNumber.String(), second.Leaf.SerialNumber.String()}
	if len(seen) != 2 || seen[0] != want[0] || seen[1] != want[1] {
		t.Fatalf("the server saw client certificates %v, want %v (the renewed SVID on the second call)", seen, want)
	}
}
