package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// agentAttackNodeConn is a gRPC connection authenticated by an SVID Sigil
// issued for id (as a node would be after enrolment).
func agentAttackNodeConn(t *testing.T, d *devServer, id string) *grpc.ClientConn {
	t.Helper()
	chain, key := mtlsAttackIssueSVID(t, d, id)
	cert := &tls.Certificate{PrivateKey: key}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return grpcAttackConn(t, d, cert, "")
}

func agentAttackCSR(t *testing.T, id string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// TestAttackAgentNodeScoped: an agent obtains SVIDs only for entries
// parented to its own node, whose identity is the SPIFFE ID Sigil recorded
// for its SVID. Node A cannot mint node B's entry (X.509 or JWT), cannot
// put another name in the CSR of its own entry, and does not even see B's
// entries; a token, even the root token, is no node.
func TestAttackAgentNodeScoped(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	const nodeA, nodeB = "spiffe://sigil.test/node/a", "spiffe://sigil.test/node/b"
	const appA, appB = "spiffe://sigil.test/ns/a-app", "spiffe://sigil.test/ns/b-app"
	entryA := agentEntry(t, d, nodeA, appA, "--selector", "unix:uid:0")
	entryB := agentEntry(t, d, nodeB, appB, "--selector", "unix:uid:0")
	connA := agentAttackNodeConn(t, d, nodeA)
	a := sigilv1.NewAgentServiceClient(connA)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Positive control: A mints its own entry.
	if _, err := a.MintX509SVID(ctx, &sigilv1.MintX509SVIDRequest{EntryId: entryA, Csr: agentAttackCSR(t, appA)}); err != nil {
		t.Fatalf("node A minting its own entry: %v", err)
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"B's entry, B's name", func() error {
			_, err := a.MintX509SVID(ctx, &sigilv1.MintX509SVIDRequest{EntryId: entryB, Csr: agentAttackCSR(t, appB)})
			return err
		}},
		{"B's entry, A's name", func() error {
			_, err := a.MintX509SVID(ctx, &sigilv1.MintX509SVIDRequest{EntryId: entryB, Csr: agentAttackCSR(t, appA)})
			return err
		}},
		{"A's entry, B's name in the CSR", func() error {
			_, err := a.MintX509SVID(ctx, &sigilv1.MintX509SVIDRequest{EntryId: entryA, Csr: agentAttackCSR(t, appB)})
			return err
		}},
		{"B's entry, JWT-SVID", func() error {
			_, err := a.MintJWTSVID(ctx, &sigilv1.MintJWTSVIDRequest{EntryId: entryB, Audience: []string{"x"}})
			return err
		}},
		{"B's entry deleted by node A", func() error {
			_, err := a.DeleteEntry(ctx, &sigilv1.DeleteEntryRequest{Id: entryB})
			return err
		}},
		{"entries listed by node A", func() error {
			_, err := a.ListEntries(ctx, &sigilv1.ListEntriesRequest{})
			return err
		}},
		{"root token as a node", func() error {
			root := sigilv1.NewAgentServiceClient(grpcAttackConn(t, d, nil, d.exports["SIGIL_TOKEN"]))
			_, err := root.MintX509SVID(ctx, &sigilv1.MintX509SVIDRequest{EntryId: entryA, Csr: agentAttackCSR(t, appA)})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("%v, want PermissionDenied", err)
			}
		})
	}
	list, err := a.FetchEntries(ctx, &sigilv1.FetchEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetEntries()) != 1 || list.GetEntries()[0].GetId() != entryA {
		t.Fatalf("node A fetched %v, want only its entry %s", list.GetEntries(), entryA)
	}
	// The workload SVID node A just obtained is not node B either.
	if list, err := sigilv1.NewAgentServiceClient(agentAttackNodeConn(t, d, appA)).FetchEntries(ctx, &sigilv1.FetchEntriesRequest{}); err != nil || len(list.GetEntries()) != 0 {
		t.Fatalf("a workload SVID fetched %v, %v; want nothing", list.GetEntries(), err)
	}
}

// TestAttackAgentEntryGrant: a token granted create on one subtree of
// entries creates entries there only, and cannot list or delete them.
func TestAttackAgentEntryGrant(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	mtlsAttackWritePolicy(t, d, "web-entries", `rules:
  - path: "sys/agent/entries/sigil.test/ns/web/*"
    capabilities: [create, sudo]
`)
	out, stderr, code := d.cli(t, "token", "create", "--policy", "web-entries", "--format", "json")
	var resp struct{ Token string }
	if code != 0 || json.Unmarshal([]byte(out), &resp) != nil || resp.Token == "" {
		t.Fatalf("token create: %s %s", out, stderr)
	}
	tok := resp.Token
	const node = "spiffe://sigil.test/node/a"
	create := func(id string) (string, int) {
		_, stderr, code := d.cli(t, "agent", "entry", "create", "--token", tok, "--parent", node, "--spiffe-id", id, "--selector", "unix:uid:1000")
		return stderr, code
	}
	if stderr, code := create("spiffe://sigil.test/ns/web/app"); code != 0 {
		t.Fatalf("entry inside the grant: %s", stderr)
	}
	for _, id := range []string{"spiffe://sigil.test/ns/db/app", "spiffe://sigil.test/ns/web/a/b", "spiffe://sigil.test/node/a/x"} {
		if stderr, code := create(id); code != 1 || !strings.Contains(stderr, "sys/agent/entries/"+strings.TrimPrefix(id, "spiffe://")) {
			t.Errorf("entry %s outside the grant: %d %s", id, code, stderr)
		}
	}
	if _, stderr, code := d.cli(t, "agent", "entry", "list", "--token", tok); code != 1 || !strings.Contains(stderr, "sys/agent/entries") {
		t.Errorf("list without a grant: %d %s", code, stderr)
	}
	list, _, _ := d.cli(t, "agent", "entry", "list")
	id, _, _ := strings.Cut(list, "\t")
	if _, stderr, code := d.cli(t, "agent", "entry", "delete", "--token", tok, id); code != 1 || !strings.Contains(stderr, "permission denied") {
		t.Errorf("delete without a grant: %d %s", code, stderr)
	}
	// Bad input is named.
	if _, stderr, code := d.cli(t, "agent", "entry", "create", "--parent", node, "--spiffe-id", "spiffe://sigil.test/x", "--selector", "unix:path:/bin/sh"); code != 1 || !strings.Contains(stderr, "unix:uid") {
		t.Errorf("an entry any user's process would match: %d %s", code, stderr)
	}
}

// TestAttackAgentBootstrap: a join token enrols one agent only; a socket
// in a world-writable directory is refused; a Workload API call without
// the security header is refused.
func TestAttackAgentBootstrap(t *testing.T) {
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	const node = "spiffe://sigil.test/node/a"
	tok := agentJoinToken(t, d, node)
	a := agentStart(t, d, agentDir(t), "--join-token", tok, "--spiffe-id", node)

	other := agentDir(t)
	if err := os.MkdirAll(filepath.Join(other, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	agentRunExpectFail(t, "already used", "--server", d.exports["SIGIL_ADDR"], "--cacert", d.exports["SIGIL_CACERT"],
		"--data", filepath.Join(other, "data"), "--socket", filepath.Join(other, "run", "s.sock"), "--join-token", tok, "--spiffe-id", node)

	open := filepath.Join(other, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	agentRunExpectFail(t, "world-writable", "--server", d.exports["SIGIL_ADDR"], "--cacert", d.exports["SIGIL_CACERT"],
		"--data", a.dataDir, "--socket", filepath.Join(open, "s.sock"))

	conn, err := grpc.NewClient("unix://"+a.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wl := workload.NewSpiffeWorkloadAPIClient(conn)
	if _, err := wl.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"x"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("without the security header: %v, want InvalidArgument", err)
	}
	// With it, and no matching entry: PermissionDenied.
	hdr := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	if _, err := wl.FetchJWTSVID(hdr, &workload.JWTSVIDRequest{Audience: []string{"x"}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("no matching entry: %v, want PermissionDenied", err)
	}
}
