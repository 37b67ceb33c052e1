package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentintNodePolicy grants the node what its templates read: the db/app
// credential, and renewing and revoking its own leases of that role. The
// binding to the node's SPIFFE ID is what an mTLS caller gets policies
// from (as docs/agent.md shows).
const agentintNodePolicy = `bindings:
  spiffe_ids: ["spiffe://sigil.test/node/agentint"]
rules:
  - path: "db/creds/app"
    capabilities: [read]
  - path: "leases/db/app/*"
    capabilities: [update, delete]
`

// agentintEnv is the environment of the agent: the test's own without any
// SIGIL_ variable, so the agent holds no token and no client certificate.
func agentintEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIGIL_") {
			env = append(env, kv)
		}
	}
	return env
}

// agentintStart runs `sigil agent --config cfg` with extra flags and waits
// for its Workload API socket.
func agentintStart(t *testing.T, cfg, socket string, extra ...string) *renderChild {
	t.Helper()
	c := &renderChild{child: newChild(exec.Command(sigilBin, append([]string{"agent", "--config", cfg}, extra...)...)), stderr: &syncBuffer{}}
	c.cmd.Env = agentintEnv()
	c.cmd.Stderr, c.cmd.Stdout = c.stderr, c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.watch(t)
	waitFor(t, 20*time.Second, "agent socket", func() bool {
		if c.hasExited() {
			t.Fatalf("agent exited:\n%s", c.stderr.String())
		}
		_, err := os.Stat(socket)
		return err == nil
	})
	return c
}

// TestAgentintTemplatesOverNodeSVID: the built `sigil agent`, configured by
// one agent.yaml and holding no token, renders a PostgreSQL credential
// into a 0400 file on tmpfs over its node SVID's mTLS connection: the lease
// is the node's, psql logs in with it, and a template the node's policy
// does not grant fails while the agent keeps running. After `sigil lease
// revoke` the agent mints anew, rewrites the file and signals the
// pidfile'd process; on SIGINT it revokes its lease.
func TestAgentintTemplatesOverNodeSVID(t *testing.T) {
	pg := newPGTarget(t)
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	renderSetupPG(t, d, pg.dsn, "4s")
	mtlsAttackWritePolicy(t, d, "agentint-node", agentintNodePolicy)
	const node = "spiffe://sigil.test/node/agentint"
	join := agentJoinToken(t, d, node)

	dir := agentDir(t)
	socket := filepath.Join(dir, "run", "agent.sock")
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		t.Fatal(err)
	}
	shm := renderShmDir(t)
	pidfile, hups := renderHupTarget(t)
	dbFile, kvFile := filepath.Join(shm, "db.env"), filepath.Join(shm, "api.key")
	cfgPath, health := filepath.Join(t.TempDir(), "agent.yaml"), freeAddr(t)
	cfg := `server: ` + d.exports["SIGIL_ADDR"] + `
cacert: ` + d.exports["SIGIL_CACERT"] + `
data: ` + filepath.Join(dir, "data") + `
socket: ` + socket + `
spiffe_id: ` + node + `
sync_interval: 1s
health_addr: ` + health + `
templates:
  - contents: |
      {{ with creds "db/app" }}user={{ .username }}
      password={{ .password }}
      {{ end }}
    destination: ` + dbFile + `
    mode: 0400
    reload: {signal: HUP, pidfile: ` + pidfile + `}
  - contents: '{{ kv "kv/app" "api_key" }}'
    destination: ` + kvFile + `
`
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The join token is spent at enrolment; everything after is the node
	// SVID's.
	a := agentintStart(t, cfgPath, socket, "--join-token", join)

	waitFor(t, 20*time.Second, "credential file rendered", func() bool { return strings.Contains(renderRead(dbFile), "password=") })
	fi, err := os.Stat(dbFile)
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("credential file mode %v (err %v), want 0400", fi.Mode(), err)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(dbFile, &sfs); err != nil || sfs.Type != 0x01021994 {
		t.Fatalf("credential file is not on tmpfs (type 0x%x, err %v)", sfs.Type, err)
	}
	user1, pw1 := renderFileCreds(t, renderRead(dbFile))
	if who, err := pg.psqlLogin(t, user1, pw1); err != nil || who != user1 {
		t.Fatalf("psql with the rendered credential: current_user %q, err %v", who, err)
	}
	leases := listLeases(t, d, "--prefix", "db/app/")
	if len(leases) != 1 || leases[0].State != "active" || leases[0].Identity != node {
		t.Fatalf("leases %+v: want one active lease owned by the node %s", leases, node)
	}
	// The node renews its own lease (update on leases/db/app/*).
	waitFor(t, 10*time.Second, "the node renewing its lease", func() bool {
		now := listLeases(t, d, "--prefix", "db/app/")
		return len(now) == 1 && now[0].ID == leases[0].ID && now[0].ExpiresAt.After(leases[0].ExpiresAt)
	})
	if c := renderRead(dbFile); !strings.Contains(c, pw1) {
		t.Fatal("the file changed although its lease was renewed")
	}
	waitFor(t, 10*time.Second, "reload signal after the first render", func() bool { return strings.Count(renderRead(hups), "hup") >= 1 })
	hupsBefore := strings.Count(renderRead(hups), "hup")

	// Deny by default: kv/app is not the node's to read.
	waitFor(t, 10*time.Second, "the ungranted template refused", func() bool {
		s := a.stderr.String()
		return strings.Contains(s, "render failed") && strings.Contains(s, "kv/app") && strings.Contains(s, "PermissionDenied")
	})
	if _, err := os.Stat(kvFile); !os.IsNotExist(err) {
		t.Errorf("the ungranted kv secret was rendered (%v)", err)
	}
	if m := agentMetrics(t, &agentProc{healthAddr: health}); !strings.Contains(m, "sigil_agent_templates_failing 1\n") ||
		strings.Contains(m, "sigil_agent_render_failures_total 0\n") {
		t.Errorf("metrics with one template failing:\n%s", m)
	}

	if _, stderr, code := d.cli(t, "lease", "revoke", leases[0].ID); code != 0 {
		t.Fatalf("lease revoke: %s", stderr)
	}
	waitFor(t, 20*time.Second, "file rewritten with a new credential", func() bool {
		c := renderRead(dbFile)
		return strings.Contains(c, "password=") && !strings.Contains(c, pw1)
	})
	user2, pw2 := renderFileCreds(t, renderRead(dbFile))
	if who, err := pg.psqlLogin(t, user2, pw2); err != nil || who != user2 {
		t.Fatalf("psql with the re-minted credential: current_user %q, err %v", who, err)
	}
	if _, err := pg.psqlLogin(t, user1, pw1); err == nil {
		t.Error("the revoked credential still logs in")
	}
	waitFor(t, 10*time.Second, "reload signal after the re-mint", func() bool { return strings.Count(renderRead(hups), "hup") > hupsBefore })
	if fi, err := os.Stat(dbFile); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("re-rendered file mode %v, want 0400", fi.Mode())
	}

	// A clean exit revokes the node's lease with the node's own grant.
	a.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-a.done:
		if err != nil {
			t.Fatalf("agent after SIGINT: %v\n%s", err, a.stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not exit within 20s of SIGINT")
	}
	if left := renderActiveLeases(t, d, "db/app/"); len(left) != 0 {
		t.Errorf("leases still active after the agent exited: %v\n%s", left, a.stderr.String())
	}
	for _, secret := range []string{pw1, pw2, join} {
		if strings.Contains(a.stderr.String(), secret) {
			t.Error("the agent logged a secret")
		}
	}
}
