package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// agentProc is a running `sigil agent`.
type agentProc struct {
	child
	socket     string
	dataDir    string
	healthAddr string
	stderr     *syncBuffer
}

// agentDir is a directory other users may enter (t.TempDir is 0700), for
// the socket and the helper binary; removed at the end.
func agentDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sigil-agent-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// agentStart runs the agent against d and waits for its socket. Its
// health port comes from freeAddr, free when chosen but not reserved: if
// another process takes it first, the agent is started again on a new one
// (it keeps the node SVID it enrolled in its data directory).
func agentStart(t *testing.T, d *devServer, dir string, extra ...string) *agentProc {
	t.Helper()
	return startAgain(t, func() (*agentProc, error) { return agentLaunch(t, d, dir, extra...) })
}

func agentLaunch(t *testing.T, d *devServer, dir string, extra ...string) (*agentProc, error) {
	t.Helper()
	a := &agentProc{socket: filepath.Join(dir, "run", "agent.sock"), dataDir: filepath.Join(dir, "data"), healthAddr: freeAddr(t),
		stderr: &syncBuffer{}}
	if err := os.MkdirAll(filepath.Dir(a.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"agent", "--server", d.exports["SIGIL_ADDR"], "--cacert", d.exports["SIGIL_CACERT"], "--data", a.dataDir,
		"--socket", a.socket, "--health-addr", a.healthAddr, "--sync-interval", "1s"}, extra...)
	a.child = newChild(exec.Command(sigilBin, args...))
	a.cmd.Stderr = a.stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go a.reap()
	t.Cleanup(func() { a.stop(t) })
	for i := 0; i < 300; i++ {
		if _, err := os.Stat(a.socket); err == nil {
			return a, nil
		}
		select {
		case err := <-a.done:
			a.done <- err
			return nil, fmt.Errorf("agent exited (%v); stderr:\n%s", err, a.stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("agent socket never appeared; stderr:\n%s", a.stderr.String())
}

func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	if a.cmd.Process == nil {
		return
	}
	if a.hasExited() {
		return
	}
	_ = a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		t.Errorf("agent did not stop within 15s")
	}
}

// agentRunExpectFail runs the agent and expects it to exit non-zero with
// want in its output.
func agentRunExpectFail(t *testing.T, want string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sigilBin, append([]string{"agent"}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), want) {
		t.Fatalf("agent %v: %v, output %q; want a failure saying %q", args, err, out, want)
	}
}

func agentJoinToken(t *testing.T, d *devServer, id string) string {
	t.Helper()
	tok, stderr, code := d.cli(t, "identity", "join-token", "create", "--spiffe-id", id, "--ttl", "5m")
	if code != 0 {
		t.Fatalf("join-token create: %s", stderr)
	}
	return strings.TrimSpace(tok)
}

// agentEntry creates a registration entry and returns its id.
func agentEntry(t *testing.T, d *devServer, parent, id string, args ...string) string {
	t.Helper()
	out, stderr, code := d.cli(t, append([]string{"agent", "entry", "create", "--parent", parent, "--spiffe-id", id, "--format", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("entry create %s: %s", id, stderr)
	}
	var e struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil || e.ID == "" {
		t.Fatalf("entry create output %q: %v", out, err)
	}
	return e.ID
}

func agentFileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// agentBuildClient builds the helper Workload API client into dir (0755).
func agentBuildClient(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "agentclient")
	out, err := exec.Command("go", "build", "-o", bin, "./testdata/agentclient").CombinedOutput()
	if err != nil {
		t.Fatalf("build agentclient: %v\n%s", err, out)
	}
	return bin
}

// agentClientAs runs the helper client as uid (and gid) against socket.
func agentClientAs(t *testing.T, bin, socket string, uid uint32) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run agentclient as uid %d: %v", uid, err)
	}
	return out.String(), errb.String(), code
}

// agentWatcher collects X.509 context updates.
type agentWatcher struct{ updates chan *workloadapi.X509Context }

func (w agentWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.updates <- c }
func (w agentWatcher) OnX509ContextWatchError(error)                  {}

func agentSVID(t *testing.T, c *workloadapi.X509Context, id string) *x509svid.SVID {
	t.Helper()
	for _, s := range c.SVIDs {
		if s.ID.String() == id {
			return s
		}
	}
	t.Fatalf("no SVID for %s in the update", id)
	return nil
}

// agentNextSerial waits for an update whose SVID for id has a serial other
// than old, and returns it.
func agentNextSerial(t *testing.T, updates chan *workloadapi.X509Context, id, old string, within time.Duration) *x509svid.SVID {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case c := <-updates:
			s := agentSVID(t, c, id)
			if s.Certificates[0].SerialNumber.Text(16) != old {
				return s
			}
		case <-deadline:
			t.Fatalf("no new SVID for %s within %v", id, within)
		}
	}
}

func agentMetrics(t *testing.T, a *agentProc) string {
	t.Helper()
	resp, err := http.Get("http://" + a.healthAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func agentPick(id string) workloadapi.X509SourceOption {
	return workloadapi.WithDefaultX509SVIDPicker(func(list []*x509svid.SVID) *x509svid.SVID {
		for _, s := range list {
			if s.ID.String() == id {
				return s
			}
		}
		return list[0]
	})
}

// TestAgentWorkloadAPI is issue 16's identity half, end to end with the
// built binary and go-spiffe: enrolment, SVIDs and bundles to an attested
// uid, rotation within the lifetime, mTLS between two workloads, JWT-SVIDs,
// refusal of other uids and of a binary whose hash differs, and an outage
// of the server survived on the cache and recovered from by itself.
func TestAgentWorkloadAPI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run workload clients as other uids")
	}
	dir := agentDir(t)
	dataDir := filepath.Join(t.TempDir(), "server")
	d := startDev(t, dataDir)
	client := agentBuildClient(t, dir)
	const node = "spiffe://sigil.test/node/a"
	const webID, dbID = "spiffe://sigil.test/ns/web", "spiffe://sigil.test/ns/db"
	const hashedID, staleID = "spiffe://sigil.test/ns/hashed", "spiffe://sigil.test/ns/stale"
	agentEntry(t, d, node, webID, "--selector", "unix:uid:0", "--ttl", "1m")
	agentEntry(t, d, node, dbID, "--selector", "unix:uid:0", "--ttl", "1m")
	agentEntry(t, d, node, hashedID, "--selector", "unix:uid:65533", "--selector", "unix:sha256:"+agentFileSHA256(t, client))
	// The hash of another binary: the client's hash "changed".
	agentEntry(t, d, node, staleID, "--selector", "unix:uid:65532", "--selector", "unix:sha256:"+agentFileSHA256(t, sigilBin))

	a := agentStart(t, d, dir, "--join-token", agentJoinToken(t, d, node), "--spiffe-id", node)
	fi, err := os.Stat(filepath.Join(a.dataDir, "node.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node SVID file: %v %v, want mode 0600", fi, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	addr := workloadapi.WithAddr("unix://" + a.socket)
	wc, err := workloadapi.New(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	x, err := wc.FetchX509Context(ctx)
	if err != nil {
		t.Fatalf("FetchX509Context: %v; agent:\n%s", err, a.stderr.String())
	}
	web := agentSVID(t, x, webID)
	agentSVID(t, x, dbID)
	if len(x.SVIDs) != 2 {
		t.Errorf("uid 0 got %d SVIDs, want web and db only", len(x.SVIDs))
	}
	td := spiffeid.RequireTrustDomainFromString("sigil.test")
	b, err := x.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil || len(b.X509Authorities()) == 0 {
		t.Fatalf("bundle for sigil.test: %v", err)
	}
	if _, _, err := x509svid.Verify(web.Certificates, x.Bundles); err != nil {
		t.Fatalf("the SVID does not verify against the bundle: %v", err)
	}

	t.Run("mTLS between two workloads", func(t *testing.T) {
		webSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr), agentPick(webID))
		if err != nil {
			t.Fatal(err)
		}
		defer webSrc.Close()
		dbSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr), agentPick(dbID))
		if err != nil {
			t.Fatal(err)
		}
		defer dbSrc.Close()
		l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(dbSrc, dbSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(webID))))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		got := make(chan string, 2)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(20 * time.Second))
					tc := c.(*tls.Conn)
					if err := tc.Handshake(); err != nil {
						got <- "handshake: " + err.Error()
						return
					}
					buf := make([]byte, 5)
					if _, err := io.ReadFull(c, buf); err != nil {
						got <- err.Error()
						return
					}
					c.Write([]byte("pong"))
					got <- string(buf) + " from " + tc.ConnectionState().PeerCertificates[0].URIs[0].String()
				}()
			}
		}()
		dial := func(src *workloadapi.X509Source, authz tlsconfig.Authorizer) (*tls.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", l.Addr().String(), tlsconfig.MTLSClientConfig(src, src, authz))
		}
		c, err := dial(webSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(dbID)))
		if err != nil {
			t.Fatalf("mTLS dial: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write([]byte("ping!"))
		reply := make([]byte, 4)
		if _, err := io.ReadFull(c, reply); err != nil || string(reply) != "pong" {
			t.Fatalf("reply %q: %v", reply, err)
		}
		if s := <-got; s != "ping! from "+webID {
			t.Fatalf("server saw %q", s)
		}
		// A client that is not web is refused by the server's authorizer.
		if c2, err := dial(dbSrc, tlsconfig.AuthorizeAny()); err == nil {
			c2.SetDeadline(time.Now().Add(10 * time.Second))
			c2.Write([]byte("ping!"))
			if _, err := c2.Read(make([]byte, 1)); err == nil {
				t.Error("db was accepted where only web is authorised")
			}
			c2.Close()
		}
		if s := <-got; !strings.HasPrefix(s, "handshake: ") {
			t.Errorf("server side of the unauthorised client: %q, want a handshake failure", s)
		}
	})

	t.Run("JWT-SVID", func(t *testing.T) {
		svid, err := wc.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db-service", Subject: spiffeid.RequireFromString(webID)})
		if err != nil {
			t.Fatalf("FetchJWTSVID: %v", err)
		}
		v, err := wc.ValidateJWTSVID(ctx, svid.Marshal(), "db-service")
		if err != nil || v.ID.String() != webID {
			t.Fatalf("ValidateJWTSVID through the agent: %v %v", v, err)
		}
		bundles, err := wc.FetchJWTBundles(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"db-service"}); err != nil || v.ID.String() != webID {
			t.Fatalf("against the JWKS: %v %v", v, err)
		}
		if _, err := wc.ValidateJWTSVID(ctx, svid.Marshal(), "another-audience"); err == nil {
			t.Error("a JWT-SVID validated for an audience it was not issued to")
		}
		tampered := svid.Marshal()
		tampered = tampered[:len(tampered)-4] + "AAAA"
		if _, err := wc.ValidateJWTSVID(ctx, tampered, "db-service"); err == nil {
			t.Error("a tampered JWT-SVID validated")
		}
	})

	t.Run("attestation by uid and binary hash", func(t *testing.T) {
		if out, stderr, code := agentClientAs(t, client, a.socket, 65533); code != 0 || strings.TrimSpace(out) != hashedID {
			t.Errorf("uid 65533 running the registered binary: %d %q %s", code, out, stderr)
		}
		if out, stderr, code := agentClientAs(t, client, a.socket, 65534); code == 0 || !strings.Contains(stderr, "PermissionDenied") {
			t.Errorf("uid 65534 (no entry) was not refused: %d %q %s", code, out, stderr)
		}
		if out, stderr, code := agentClientAs(t, client, a.socket, 65532); code == 0 || !strings.Contains(stderr, "PermissionDenied") {
			t.Errorf("uid 65532 with another binary's hash was not refused: %d %q %s", code, out, stderr)
		}
	})

	// Rotation: a new SVID arrives on the stream before the old expires.
	updates := make(chan *workloadapi.X509Context, 16)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go wc.WatchX509Context(wctx, agentWatcher{updates})
	first := agentSVID(t, <-updates, webID)
	rotated := agentNextSerial(t, updates, webID, first.Certificates[0].SerialNumber.Text(16), 75*time.Second)
	if !time.Now().Before(first.Certificates[0].NotAfter) {
		t.Errorf("the rotation came after the old SVID expired (%v)", first.Certificates[0].NotAfter)
	}

	// Outage: the server is killed; the agent serves its cache.
	grpcAddr := d.exports["SIGIL_ADDR"]
	_ = d.cmd.Process.Kill()
	<-d.done
	time.Sleep(3 * time.Second)
	x2, err := wc.FetchX509Context(ctx)
	if err != nil {
		t.Fatalf("FetchX509Context while the server is down: %v", err)
	}
	if s := agentSVID(t, x2, webID); s.Certificates[0].SerialNumber.Cmp(rotated.Certificates[0].SerialNumber) != 0 {
		t.Errorf("served %s during the outage, want the cached %s", s.Certificates[0].SerialNumber.Text(16), rotated.Certificates[0].SerialNumber.Text(16))
	}
	// JWT-SVIDs too: the one fetched above is cached, and validation needs
	// only the key set the agent holds.
	jwt, err := wc.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db-service", Subject: spiffeid.RequireFromString(webID)})
	if err != nil {
		t.Fatalf("FetchJWTSVID while the server is down: %v", err)
	}
	if _, err := wc.ValidateJWTSVID(ctx, jwt.Marshal(), "db-service"); err != nil {
		t.Fatalf("ValidateJWTSVID while the server is down: %v", err)
	}
	if m := agentMetrics(t, a); strings.Contains(m, "sigil_agent_sync_failures_total 0\n") || !strings.Contains(m, "sigil_agent_next_svid_expiry_timestamp_seconds") {
		t.Errorf("metrics during the outage:\n%s", m)
	}
	// Restarted on the same address, the server sees the agent renew by
	// itself.
	startServer(t, dataDir, true, filepath.Join(dataDir, "ca.pem"), "--grpc-addr", grpcAddr)
	agentNextSerial(t, updates, webID, rotated.Certificates[0].SerialNumber.Text(16), 75*time.Second)
	if resp, err := http.Get("http://" + a.healthAddr + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz after recovery: %v %v", resp, err)
	}
	wcancel()

	// A later start reuses the node SVID: no join token needed.
	a.stop(t)
	a2 := agentStart(t, &devServer{exports: map[string]string{"SIGIL_ADDR": grpcAddr, "SIGIL_CACERT": d.exports["SIGIL_CACERT"]}}, dir)
	x3, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+a2.socket))
	if err != nil {
		t.Fatalf("after an agent restart: %v; agent:\n%s", err, a2.stderr.String())
	}
	agentSVID(t, x3, webID)
	if !strings.Contains(a2.stderr.String(), "reusing the node SVID") {
		t.Errorf("restarted agent did not say it reused its SVID:\n%s", a2.stderr.String())
	}
}
