package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"go.step.sm/crypto/pemutil"
)

func TestMain(m *testing.M) { testharness.Main(m) }

func httpsClient(s *testharness.Sigil) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.RootPool}}}
}

func get(t *testing.T, c *http.Client, url string) (int, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestHTTPSEndpoints(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	c := httpsClient(s)
	base := "https://" + s.Server.HTTPSAddr()
	tests := []struct {
		path     string
		wantCode int
		contains string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 200, `"ready":true`},
		{"/metrics", 200, "sigil_build_info"},
		{"/ca/root.pem", 200, "BEGIN CERTIFICATE"},
		{"/ca/chain.pem", 200, "BEGIN CERTIFICATE"},
		{"/ca/nonexistent.der", 404, ""},
		{"/crl/nope/x.crl", 404, ""},
		{"/nope", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			code, body := get(t, c, base+tt.path)
			if code != tt.wantCode || !strings.Contains(string(body), tt.contains) {
				t.Errorf("GET %s = %d %q, want %d containing %q", tt.path, code, body, tt.wantCode, tt.contains)
			}
		})
	}

	// The chain verifies up to the root the server wrote.
	_, chainPEM := get(t, c, base+"/ca/chain.pem")
	certs, err := pemutil.ParseCertificateBundle(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 {
		t.Fatalf("chain has %d certificates, want intermediate and root", len(certs))
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: s.RootPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("intermediate does not verify: %v", err)
	}
}

func TestGRPCAuthentication(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	dial := func(creds credentials.PerRPCCredentials) *grpc.ClientConn {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: s.RootPool}))}
		if creds != nil {
			opts = append(opts, grpc.WithPerRPCCredentials(creds))
		}
		conn, err := grpc.NewClient(s.Server.GRPCAddr(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tests := []struct {
		name  string
		creds credentials.PerRPCCredentials
		code  codes.Code
	}{
		{"no token", nil, codes.Unauthenticated},
		{"wrong token", testharness.BearerToken("sgt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), codes.Unauthenticated},
		{"not a sigil token", testharness.BearerToken("hunter2"), codes.Unauthenticated},
		{"oversized token", testharness.BearerToken("sgt_" + strings.Repeat("A", 5000)), codes.Unauthenticated},
		{"root token", testharness.BearerToken(s.RootToken), codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := sigilv1.NewCAServiceClient(dial(tt.creds)).GetRoot(ctx, &sigilv1.GetRootRequest{})
			if status.Code(err) != tt.code {
				t.Fatalf("GetRoot: %v, want %v", err, tt.code)
			}
		})
	}
	// Status needs no token.
	st, err := sigilv1.NewSysServiceClient(dial(nil)).Status(ctx, &sigilv1.StatusRequest{})
	if err != nil || st.GetSealed() || st.GetStorageBackend() != "sqlite" || st.GetCaSubject() == "" {
		t.Fatalf("Status = %v, %v", st, err)
	}
}

func csrFor(t testing.TB, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSignRevokeListOverGRPC(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := sigilv1.NewCAServiceClient(s.Conn)

	resp, err := client.Sign(ctx, &sigilv1.SignRequest{
		Csr:     csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "app.example.test"}, DNSNames: []string{"app.example.test"}}),
		Profile: "server", TtlSeconds: 3600,
	})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(resp.GetCertificatePem()))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AppendCertsFromPEM([]byte(resp.GetChainPem()))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.RootPool, Intermediates: inter, DNSName: "app.example.test"}); err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}

	// Bad input gets InvalidArgument (or PermissionDenied for policy) with a message.
	badTests := []struct {
		name string
		req  *sigilv1.SignRequest
		code codes.Code
	}{
		{"empty CSR", &sigilv1.SignRequest{}, codes.InvalidArgument},
		{"garbage CSR", &sigilv1.SignRequest{Csr: []byte("not a csr")}, codes.InvalidArgument},
		{"negative TTL", &sigilv1.SignRequest{Csr: []byte("x"), TtlSeconds: -1}, codes.InvalidArgument},
		{"unknown profile", &sigilv1.SignRequest{Csr: csrFor(t, &x509.CertificateRequest{DNSNames: []string{"a.example.test"}}), Profile: "nope"}, codes.NotFound},
	}
	for _, tt := range badTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.Sign(ctx, tt.req)
			if status.Code(err) != tt.code || status.Convert(err).Message() == "" {
				t.Fatalf("Sign: %v, want %v", err, tt.code)
			}
		})
	}

	list, err := client.ListCertificates(ctx, &sigilv1.ListCertificatesRequest{Name: "app.example.test"})
	if err != nil || len(list.GetCertificates()) != 1 || list.GetCertificates()[0].GetSerial() != resp.GetSerial() {
		t.Fatalf("list by name = %v, %v", list, err)
	}
	if _, err := client.Revoke(ctx, &sigilv1.RevokeRequest{Serial: resp.GetSerial(), Reason: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Revoke(ctx, &sigilv1.RevokeRequest{Serial: "00"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("revoke malformed serial: %v", err)
	}
	if _, err := client.Revoke(ctx, &sigilv1.RevokeRequest{Serial: "7a3b9c"}); status.Code(err) != codes.NotFound {
		t.Fatalf("revoke unknown serial: %v", err)
	}
	revoked, err := client.ListCertificates(ctx, &sigilv1.ListCertificatesRequest{RevokedOnly: true})
	if err != nil || len(revoked.GetCertificates()) != 1 || revoked.GetCertificates()[0].GetRevocationReason() != 1 {
		t.Fatalf("revoked list = %v, %v", revoked, err)
	}
	// The CRL at the certificate's CDP URL lists it with its reason.
	if len(leaf.CRLDistributionPoints) != 1 {
		t.Fatalf("CDP = %v", leaf.CRLDistributionPoints)
	}
	code, crl := get(t, httpsClient(s), leaf.CRLDistributionPoints[0])
	if code != 200 {
		t.Fatalf("GET %s = %d", leaf.CRLDistributionPoints[0], code)
	}
	rl, err := x509.ParseRevocationList(crl)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range rl.RevokedCertificateEntries {
		if e.SerialNumber.Text(16) == resp.GetSerial() {
			found = e.ReasonCode == 1
		}
	}
	if !found {
		t.Fatalf("CRL does not list %s with reason keyCompromise", resp.GetSerial())
	}
}

// Secrets in responses travel only sealed: a call that names no recipient
// is refused before anything is made.
func TestSecretsNeedARecipient(t *testing.T) {
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bad := &sigilv1.Recipient{Kem: 0x0020, PublicKey: []byte("short")}
	tests := []struct {
		name string
		call func(r *sigilv1.Recipient) error
	}{
		{"token create", func(r *sigilv1.Recipient) error {
			_, err := sigilv1.NewTokenServiceClient(s.Conn).Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{"root"}, Recipient: r}) // a policy that exists: only the recipient is wrong
			return err
		}},
		{"join token", func(r *sigilv1.Recipient) error {
			_, err := sigilv1.NewIdentityServiceClient(s.Conn).CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{SpiffeId: "spiffe://sigil.test/w", Recipient: r})
			return err
		}},
		{"eab key", func(r *sigilv1.Recipient) error {
			_, err := sigilv1.NewACMEServiceClient(s.Conn).CreateEAB(ctx, &sigilv1.CreateEABRequest{Recipient: r})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []*sigilv1.Recipient{nil, bad} {
				if err := tt.call(r); status.Code(err) != codes.InvalidArgument {
					t.Fatalf("recipient %v: %v, want InvalidArgument", r, err)
				}
			}
		})
	}
}
