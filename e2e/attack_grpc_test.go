package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// grpcAttackConn opens one gRPC connection to d, trusting its CA, with an
// optional client certificate and bearer token.
func grpcAttackConn(t *testing.T, d *devServer, cert *tls.Certificate, token string) *grpc.ClientConn {
	t.Helper()
	return grpcAttackConnFrom(t, d, "", cert, token)
}

// grpcAttackConnFrom is grpcAttackConn from source IP src ("": the
// system's choice; 127.0.0.N works for any N on Linux), for per-address
// bounds.
func grpcAttackConnFrom(t *testing.T, d *devServer, src string, cert *tls.Certificate, token string) *grpc.ClientConn {
	t.Helper()
	pemBytes, err := os.ReadFile(d.caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	tc := &tls.Config{RootCAs: pool}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}
	if src != "" {
		dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", addr)
		}))
	}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(testharness.BearerToken(token)))
	}
	conn, err := grpc.NewClient(d.grpcAddr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// grpcAttackHWM is the server process's peak resident set (VmHWM), in KiB.
func grpcAttackHWM(t *testing.T, d *devServer) int64 {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}

// grpcAttackSelfSigned is a client certificate Sigil never issued.
func grpcAttackSelfSigned(t *testing.T) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "mallory"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

var grpcAttackRequestID = regexp.MustCompile(`\(request id ([0-9a-f]{16})\)`)

// TestAttackGRPCUnauthenticatedFlood replays finding #9: 40 parallel 5 MiB
// requests on one connection without a valid credential. The server must
// refuse them before reading their bodies: its peak RSS may grow by at
// most 20 MiB (it grew by over 500 MiB before the early gate).
func TestAttackGRPCUnauthenticatedFlood(t *testing.T) {
	d := startDev(t, t.TempDir())
	// Warm up the code paths a legitimate call touches, so the baseline is
	// a running server's.
	root := grpcAttackConn(t, d, nil, d.exports["SIGIL_TOKEN"])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := sigilv1.NewCAServiceClient(root).GetRoot(ctx, &sigilv1.GetRootRequest{}); err != nil {
		t.Fatal(err)
	}
	// Just under the server-wide limit, so the old server read every body.
	body := bytes.Repeat([]byte("A"), 5<<20-1<<10)
	tests := []struct {
		name  string
		cert  *tls.Certificate
		token string
		want  string
	}{
		{"no credentials", nil, "", "missing credentials"},
		{"forged token", nil, "sgt_" + strings.Repeat("A", 43), "invalid or expired token"},
		{"self-signed client certificate", grpcAttackSelfSigned(t), "", "does not chain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := grpcAttackConn(t, d, tt.cert, tt.token)
			client := sigilv1.NewCAServiceClient(conn)
			before := grpcAttackHWM(t, d)
			var wg sync.WaitGroup
			errc := make(chan error, 40)
			for range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := client.Sign(ctx, &sigilv1.SignRequest{Csr: body})
					errc <- err
				}()
			}
			wg.Wait()
			close(errc)
			after := grpcAttackHWM(t, d)
			t.Logf("VmHWM %d kB -> %d kB", before, after)
			if grown := after - before; grown > 20<<10 {
				t.Errorf("server peak RSS grew by %d KiB for 40 refused 5 MiB requests (limit 20 MiB)", grown)
			}
			for err := range errc {
				if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Sign = %.300v, want Unauthenticated mentioning %q", err, tt.want)
				}
				if !grpcAttackRequestID.MatchString(err.Error()) {
					t.Fatalf("refusal %q carries no request id", err)
				}
			}
		})
	}
}

// TestAttackGRPCPublicCallsPerConnection: public methods (no credential)
// are limited in how many one connection (and one address) may have in
// flight, as each may carry a body up to the server-wide limit. Health
// checks are counted apart: four watches fill their share, and other
// public calls on the same connection still run.
func TestAttackGRPCPublicCallsPerConnection(t *testing.T) {
	d := startDev(t, t.TempDir())
	conn := grpcAttackConn(t, d, nil, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	health := healthpb.NewHealthClient(conn)
	var watches []context.CancelFunc
	for i := range 4 {
		wctx, wcancel := context.WithCancel(ctx)
		watches = append(watches, wcancel)
		w, err := health.Watch(wctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("5th health check on one connection = %v, want ResourceExhausted", err)
	}
	sys := sigilv1.NewSysServiceClient(conn)
	if _, err := sys.Status(ctx, &sigilv1.StatusRequest{}); err != nil {
		t.Fatalf("Status beside four health watches: %v", err)
	}
	// Headers without a body hold the unary public slots: four from this
	// address, then the address's bound refuses.
	held, refused := slimHold(t, ctx, conn, sigilv1.SysService_Status_FullMethodName, 6)
	if held != 4 || status.Code(refused) != codes.ResourceExhausted {
		t.Fatalf("%d of 6 bodiless Status calls held, refusal %v; want 4 and ResourceExhausted", held, refused)
	}
	watches[0]()
	waitFor(t, 10*time.Second, "a health slot freed", func() bool {
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil
	})
	for _, c := range watches[1:] {
		c()
	}
}

// TestAttackGRPCRequestLimits: after authentication, each method has its
// own size limit: a 1 MiB request to a method that needs 64-128 KiB is
// refused naming the limit; a transit batch within its larger limit works.
func TestAttackGRPCRequestLimits(t *testing.T) {
	d := startDev(t, t.TempDir())
	conn := grpcAttackConn(t, d, nil, d.exports["SIGIL_TOKEN"])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mib := bytes.Repeat([]byte("B"), 1<<20)
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"ca sign", func() error {
			_, err := sigilv1.NewCAServiceClient(conn).Sign(ctx, &sigilv1.SignRequest{Csr: mib})
			return err
		}, "128 KiB limit of /sigil.v1.CAService/Sign"},
		{"token create", func() error {
			_, err := sigilv1.NewTokenServiceClient(conn).Create(ctx, &sigilv1.CreateTokenRequest{Policies: []string{string(mib)}})
			return err
		}, "64 KiB limit of /sigil.v1.TokenService/Create"},
		{"policy write", func() error {
			_, err := sigilv1.NewPolicyServiceClient(conn).Write(ctx, &sigilv1.WritePolicyRequest{Name: "big", Document: mib})
			return err
		}, "128 KiB limit of /sigil.v1.PolicyService/Write"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), tt.want) || !grpcAttackRequestID.MatchString(err.Error()) {
				t.Fatalf("got %.300v, want ResourceExhausted naming %q and a request id", err, tt.want)
			}
		})
	}

	// Transit batches keep their 5 MiB limit: 3 items of 1 MiB encrypt.
	if _, stderr, code := d.cli(t, "engine", "enable", "transit", "--mount", "transit"); code != 0 {
		t.Fatal(stderr)
	}
	if _, stderr, code := d.cli(t, "transit", "create", "transit/bulk"); code != 0 {
		t.Fatal(stderr)
	}
	items := make([]*sigilv1.TransitItem, 3)
	for i := range items {
		items[i] = &sigilv1.TransitItem{Plaintext: mib[:1<<20-64]}
	}
	resp, err := sigilv1.NewTransitServiceClient(conn).Encrypt(ctx, &sigilv1.TransitBatchRequest{Mount: "transit", Name: "bulk", Items: items})
	if err != nil {
		t.Fatalf("3 MiB transit batch: %v", err)
	}
	for i, r := range resp.GetResults() {
		if r.GetError() != "" || !strings.HasPrefix(r.GetCiphertext(), "sigil:v1:") {
			t.Fatalf("item %d: %q %q", i, r.GetError(), r.GetCiphertext()[:min(20, len(r.GetCiphertext()))])
		}
	}
}

// grpcAttackLogLine is one JSON line of the server's log.
type grpcAttackLogLine struct {
	Msg        string  `json:"msg"`
	RequestID  string  `json:"request_id"`
	Method     string  `json:"method"`
	Identity   string  `json:"identity"`
	Code       string  `json:"code"`
	DurationMS float64 `json:"duration_ms"`
}

// TestAttackGRPCRequestIDs: every call gets a server-chosen request id in
// its response header; every error names it; the debug log has one line
// per request with it; the audit records only real decisions; failed
// transit decrypts are not counted as OK.
func TestAttackGRPCRequestIDs(t *testing.T) {
	dir := t.TempDir()
	auditPath := filepath.Join(dir, "audit.jsonl")
	cfg := filepath.Join(dir, "sigil.yaml")
	if err := os.WriteFile(cfg, []byte("audit:\n  file: "+auditPath+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, filepath.Join(dir, "data"), "--config", cfg, "--log-level", "debug", "--log-format", "json")
	conn := grpcAttackConn(t, d, nil, d.exports["SIGIL_TOKEN"])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca := sigilv1.NewCAServiceClient(conn)

	// A client-chosen id is ignored; the server's comes back as a header.
	var hdr metadata.MD
	octx := metadata.AppendToOutgoingContext(ctx, "x-request-id", "forged-id")
	if _, err := ca.GetRoot(octx, &sigilv1.GetRootRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	okID := strings.Join(hdr.Get("x-request-id"), ",")
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(okID) {
		t.Fatalf("x-request-id = %q, want 16 hex digits chosen by the server", okID)
	}

	// Errors of every origin carry the id that the header carries.
	policyFile := filepath.Join(dir, "lister.yaml")
	if err := os.WriteFile(policyFile, []byte("rules:\n  - path: \"ca/certs\"\n    capabilities: [list]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := d.cli(t, "policy", "write", "lister", policyFile); code != 0 {
		t.Fatal(stderr)
	}
	weakOut, _, _ := d.cli(t, "token", "create", "--policy", "lister", "--format", "json")
	var weak struct{ Token string }
	_ = json.Unmarshal([]byte(weakOut), &weak)
	if weak.Token == "" {
		t.Fatalf("token create: %s", weakOut)
	}
	weakConn := grpcAttackConn(t, d, nil, weak.Token)
	errCases := []struct {
		name string
		call func(opt grpc.CallOption) error
		code codes.Code
		// allowed: the call passed its authorisation check and failed
		// after it.
		allowed bool
	}{
		{"invalid argument", func(opt grpc.CallOption) error {
			_, err := ca.Revoke(ctx, &sigilv1.RevokeRequest{}, opt)
			return err
		}, codes.InvalidArgument, true},
		{"permission denied", func(opt grpc.CallOption) error {
			_, err := sigilv1.NewCAServiceClient(weakConn).Revoke(ctx, &sigilv1.RevokeRequest{Serial: "01"}, opt)
			return err
		}, codes.PermissionDenied, false},
		{"not found", func(opt grpc.CallOption) error {
			_, err := sigilv1.NewEngineServiceClient(conn).ReadRole(ctx, &sigilv1.ReadRoleRequest{Mount: "nope", Role: "r"}, opt)
			return err
		}, codes.NotFound, true},
		{"invalid before authorisation", func(opt grpc.CallOption) error {
			_, err := sigilv1.NewPolicyServiceClient(conn).Write(ctx, &sigilv1.WritePolicyRequest{Name: "bad name!"}, opt)
			return err
		}, codes.InvalidArgument, false},
	}
	errIDs := map[string]codes.Code{}
	allowedIDs := map[string]bool{}
	for _, tc := range errCases {
		var h metadata.MD
		err := tc.call(grpc.Header(&h))
		m := grpcAttackRequestID.FindStringSubmatch(status.Convert(err).Message())
		if status.Code(err) != tc.code || m == nil || h.Get("x-request-id")[0] != m[1] {
			t.Fatalf("%s: %v (header %v), want %v naming the header's request id", tc.name, err, h.Get("x-request-id"), tc.code)
		}
		errIDs[m[1]] = tc.code
		allowedIDs[m[1]] = tc.allowed
	}

	// A failed transit decrypt is counted under its real code.
	if _, stderr, code := d.cli(t, "engine", "enable", "transit", "--mount", "transit"); code != 0 {
		t.Fatal(stderr)
	}
	if _, stderr, code := d.cli(t, "transit", "create", "transit/k"); code != 0 {
		t.Fatal(stderr)
	}
	if _, _, code := d.cli(t, "transit", "decrypt", "transit/k", "sigil:v1:bm90LWEtY2lwaGVydGV4dA=="); code == 0 {
		t.Fatal("decrypt of garbage succeeded")
	}
	_, metrics := grpcAttackGet(t, d, "/metrics")
	if !strings.Contains(metrics, `sigil_grpc_requests_total{code="InvalidArgument",method="/sigil.v1.TransitService/Decrypt"} 1`) ||
		!strings.Contains(metrics, `sigil_transit_item_failures_total{method="/sigil.v1.TransitService/Decrypt"} 1`) {
		t.Fatalf("metrics do not count the failed decrypt:\n%s", grpcAttackGrep(metrics, "Decrypt"))
	}
	if strings.Contains(metrics, `sigil_grpc_requests_total{code="OK",method="/sigil.v1.TransitService/Decrypt"}`) {
		t.Fatal("a failed decrypt was counted as OK")
	}

	// One debug line per request, with method, identity, duration, code
	// and the request id.
	lines := map[string]grpcAttackLogLine{}
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		var ll grpcAttackLogLine
		if json.Unmarshal([]byte(l), &ll) == nil && ll.Msg == "grpc request" {
			if _, dup := lines[ll.RequestID]; dup {
				t.Fatalf("two request lines for %s", ll.RequestID)
			}
			lines[ll.RequestID] = ll
		}
	}
	if l := lines[okID]; l.Method != sigilv1.CAService_GetRoot_FullMethodName || l.Identity != "token:root" || l.Code != "OK" || l.DurationMS <= 0 {
		t.Fatalf("log line for %s = %+v", okID, l)
	}
	for id, code := range errIDs {
		if lines[id].Code != code.String() {
			t.Fatalf("log line for %s = %+v, want code %v", id, lines[id], code)
		}
	}

	// The audit records a decision only where one was made.
	d.stop(t)
	raw, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		RequestID string `json:"request_id"`
		Operation string `json:"operation"`
		Decision  struct {
			Allowed bool   `json:"allowed"`
			Reason  string `json:"reason"`
		} `json:"decision"`
		Status string `json:"status"`
	}
	byID := map[string]rec{}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var r rec
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		byID[r.RequestID] = r
		if r.RequestID != "" && r.Decision.Allowed && r.Decision.Reason == "" {
			t.Errorf("record %s (%s) allowed with no reason", r.RequestID, r.Operation)
		}
	}
	if r := byID[okID]; !r.Decision.Allowed || !strings.Contains(r.Decision.Reason, "public CA information") {
		t.Errorf("GetRoot audit = %+v", r)
	}
	for id, code := range errIDs {
		r := byID[id]
		if r.Decision.Allowed != allowedIDs[id] || r.Decision.Reason == "" || r.Status != code.String() {
			t.Errorf("failed call %s audited as %+v, want allowed=%v with a reason", id, r, allowedIDs[id])
		}
	}
}

func grpcAttackGet(t *testing.T, d *devServer, path string) (int, string) {
	t.Helper()
	resp, err := d.httpClient(t).Get("https://" + d.httpsAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func grpcAttackGrep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
