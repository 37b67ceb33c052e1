package e2e

// High availability (issue 18): several `sigil server` processes on one
// PostgreSQL, proven by faults injected into real processes: a node killed
// with SIGKILL under mixed load, PostgreSQL restarted under load, and a
// streaming standby promoted after the primary is stopped.

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/internal/pgcluster"
	"github.com/sigil-ca/sigil/internal/testharness"
)

// haCluster is N sigil server processes on one PostgreSQL database, each
// unsealed with the one Shamir share of the shared barrier.
type haCluster struct {
	t                    *testing.T
	dir                  string
	listenerCA, crt, key string
	dsn, config          string
	share, token         string
	nodes                []*devServer
}

// haPostgres starts a PostgreSQL server of the test's own (so it can be
// stopped, restarted and replicated without touching other tests).
func haPostgres(t *testing.T) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// synchronous_commit on (PostgreSQL's default, which the throwaway
	// harness turns off): a commit acknowledged to Sigil must survive the
	// crash-stop these tests inflict.
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Prefix: "sigil-ha-pg-", Settings: []string{"shared_buffers=16MB", "synchronous_commit=on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	return pg
}

// haStartCluster starts n nodes on dsn: the first is initialised (one
// share, threshold one) and creates the CA; each node is then unsealed
// with the share, as an operator does per node.
func haStartCluster(t *testing.T, dsn string, n int) *haCluster {
	t.Helper()
	c := &haCluster{t: t, dir: t.TempDir(), dsn: dsn}
	c.listenerCA, c.crt, c.key = listenerTLS(t, c.dir)
	// A short mint window, so leases a killed node left pending are
	// revoked within seconds; a fast expiry poll; and retries of a failed
	// revocation at most 4 s apart (the default grows to 10 min), so a
	// DROP ROLE that timed out on a loaded machine is retried within the
	// test's wait instead of 32 s or more later.
	c.config = filepath.Join(c.dir, "sigil.yaml")
	if err := os.WriteFile(c.config, []byte("lease: {mint_timeout: 2s, poll_interval: 200ms, backoff_max: 4s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	first := c.startNode(0)
	out, stderr, code := first.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
	if code != 0 {
		t.Fatalf("operator init: %s", stderr)
	}
	var ir struct {
		Shares    []string `json:"shares"`
		RootToken string   `json:"root_token"`
	}
	if err := json.Unmarshal([]byte(out), &ir); err != nil || len(ir.Shares) != 1 {
		t.Fatalf("init output %q: %v", out, err)
	}
	c.share, c.token = ir.Shares[0], ir.RootToken
	c.unseal(first)
	if _, stderr, code := c.cliOn(first, "ca", "init", "--common-name", "HA Test CA"); code != 0 {
		t.Fatalf("ca init: %s", stderr)
	}
	for i := 1; i < n; i++ {
		c.unseal(c.startNode(i))
	}
	return c
}

func (c *haCluster) startNode(i int) *devServer {
	c.t.Helper()
	d := startServer(c.t, filepath.Join(c.dir, fmt.Sprintf("node%d", i)), false, c.listenerCA,
		"--tls-cert", c.crt, "--tls-key", c.key, "--storage", c.dsn, "--config", c.config)
	c.nodes = append(c.nodes, d)
	return d
}

func (c *haCluster) unseal(d *devServer) {
	c.t.Helper()
	out, _, _ := c.cliOn(d, "status", "--format", "json")
	var st statusJSON
	if json.Unmarshal([]byte(out), &st) == nil && !st.Sealed {
		return
	}
	if _, stderr, code := c.cliOn(d, "operator", "unseal", c.share); code != 0 {
		c.t.Fatalf("unseal %s: %s", d.grpcAddr, stderr)
	}
}

// addrs is every node's gRPC address, comma-separated, as SIGIL_ADDR.
func (c *haCluster) addrs() string {
	var a []string
	for _, d := range c.nodes {
		a = append(a, d.grpcAddr)
	}
	return strings.Join(a, ",")
}

// cliOn runs the CLI against one node.
func (c *haCluster) cliOn(d *devServer, args ...string) (string, string, int) {
	return haRun(c.t, d.grpcAddr, c.token, c.listenerCA, args...)
}

// cli runs the CLI against every node (SIGIL_ADDR=a,b,c): the client
// fails over by itself.
func (c *haCluster) cli(args ...string) (string, string, int) {
	return haRun(c.t, c.addrs(), c.token, c.listenerCA, args...)
}

func (c *haCluster) must(args ...string) string {
	c.t.Helper()
	out, stderr, code := c.cli(args...)
	if code != 0 {
		c.t.Fatalf("sigil %s: code %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

// haRun runs the built CLI; safe from any goroutine (no t.Fatal).
func haRun(t *testing.T, addr, token, cacert string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sigilBin, args...)
	cmd.Env = append(os.Environ(), "SIGIL_ADDR="+addr, "SIGIL_TOKEN="+token, "SIGIL_CACERT="+cacert)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return "", err.Error(), -1
	}
	return out.String(), errb.String(), code
}

// haKill kills a node with SIGKILL: no shutdown, no released claims, no
// goodbye in the members table.
func haKill(t *testing.T, d *devServer) {
	t.Helper()
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.done // stop at cleanup then sees the process gone
}

// haReady reports /readyz's status code on a node (0: no answer).
func haReady(t *testing.T, d *devServer) int {
	t.Helper()
	resp, err := d.httpClient(t).Get("https://" + d.httpsAddr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

type haMember struct {
	ID       string `json:"id"`
	GRPCAddr string `json:"grpc_addr"`
	Sealed   bool   `json:"sealed"`
	Stale    bool   `json:"stale"`
}

func (c *haCluster) members() []haMember {
	c.t.Helper()
	var m struct {
		Members []haMember `json:"members"`
	}
	if err := json.Unmarshal([]byte(c.must("operator", "members", "--format", "json")), &m); err != nil {
		c.t.Fatal(err)
	}
	return m.Members
}

// haSerial parses the serial of the first certificate in PEM output.
func haSerial(out string) (*big.Int, bool) {
	certs, err := haPEMCerts(out)
	if err != nil || len(certs) == 0 {
		return nil, false
	}
	return certs[0].SerialNumber, true
}

func haPEMCerts(s string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return out, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// haLoad records what the clients were told.
type haLoad struct {
	mu       sync.Mutex
	serials  []*big.Int
	leases   map[string]string // lease id -> role name, long TTL
	short    map[string]string // lease id -> role name, short TTL
	kvAcked  map[int][]int64   // goroutine -> acknowledged versions
	kvFailed map[int]int       // goroutine -> puts with unknown outcome
	ok, fail atomic.Int64
	failKind [4]atomic.Int64 // failures per kind
	afterOK  [4]atomic.Int64 // successes per kind after the fault
	badErrs  []string
	wait     func()
}

type haCreds struct {
	LeaseID string `json:"lease_id"`
	Data    struct {
		Username string `json:"username"`
	} `json:"data"`
}

// haRunLoad runs 16 client goroutines until stop closes: kind i%4 signs,
// mints long leases, mints 2 s leases, or writes kv versions. after is
// closed at the fault; what succeeds later is counted per kind.
func (c *haCluster) haRunLoad(stop, after <-chan struct{}, csrs []string, role string) *haLoad {
	l := &haLoad{leases: map[string]string{}, short: map[string]string{}, kvAcked: map[int][]int64{}, kvFailed: map[int]int{}}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				var args []string
				kind := g % 4
				switch kind {
				case 0:
					args = []string{"ca", "sign", "--csr", csrs[g/4], "--ttl", "1h"}
				case 1:
					args = []string{"creds", "db/" + role, "--ttl", "1h", "--format", "json"}
				case 2:
					args = []string{"creds", "db/" + role, "--ttl", "2s", "--format", "json"}
				case 3:
					args = []string{"kv", "put", fmt.Sprintf("kv/ha/g%d", g), fmt.Sprintf("n=%d", seq), "--format", "json"}
				}
				out, stderr, code := haRun(c.t, c.addrs(), c.token, c.listenerCA, args...)
				l.mu.Lock()
				if code != 0 {
					l.fail.Add(1)
					l.failKind[kind].Add(1)
					if kind == 3 {
						l.kvFailed[g]++
					}
					// A failure must say why in terms a client can act on:
					// the node is gone or its storage is unreachable.
					if !strings.Contains(stderr, "Unavailable") {
						l.badErrs = append(l.badErrs, fmt.Sprintf("%v: %s", args[:2], stderr))
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
				select {
				case <-after:
					l.afterOK[kind].Add(1)
				default:
				}
				switch kind {
				case 0:
					if s, ok := haSerial(out); ok {
						l.serials = append(l.serials, s)
					} else {
						l.badErrs = append(l.badErrs, "ca sign printed no certificate: "+out)
					}
				case 1, 2:
					var cr haCreds
					if err := json.Unmarshal([]byte(out), &cr); err != nil || cr.LeaseID == "" {
						l.badErrs = append(l.badErrs, "creds output: "+out)
					} else if kind == 1 {
						l.leases[cr.LeaseID] = cr.Data.Username
					} else {
						l.short[cr.LeaseID] = cr.Data.Username
					}
				case 3:
					var v struct {
						Version int64 `json:"version"`
					}
					if err := json.Unmarshal([]byte(out), &v); err != nil || v.Version == 0 {
						l.badErrs = append(l.badErrs, "kv put output: "+out)
					} else {
						l.kvAcked[g] = append(l.kvAcked[g], v.Version)
					}
				}
				l.mu.Unlock()
			}
		})
	}
	go func() { <-stop; wg.Wait() }()
	l.wait = wg.Wait
	return l
}

// haSetupEngines mounts kv and a postgres engine whose role counts its
// effective revocations in ha_drops (a row only when the role still
// existed), so "revoked exactly once" is counted on the PostgreSQL side.
func (c *haCluster) haSetupEngines(superDSN, role string) *sql.DB {
	t := c.t
	t.Helper()
	admin := testharness.PostgresLeastPrivilegeAdmin(t, superDSN)
	db, err := sql.Open("pgx", superDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{
		"CREATE TABLE ha_drops (name TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())",
		"GRANT INSERT ON ha_drops TO PUBLIC",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	rev := filepath.Join(c.dir, "revocation.sql")
	if err := os.WriteFile(rev, []byte(`INSERT INTO ha_drops(name) SELECT {{name_literal}} WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{name_literal}});
DROP ROLE IF EXISTS {{name}};
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c.must("engine", "enable", "postgres", "--mount", "db")
	c.must("engine", "configure", "db", "connection_url="+admin, "max_open_connections=4", "scram_iterations=16")
	c.must("role", "write", "db/"+role, "revocation_statements=@"+rev, "default_ttl=1h", "max_ttl=24h")
	c.must("engine", "enable", "kv", "--mount", "kv")
	return db
}

type haLease struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (c *haCluster) leases(prefix string) map[string]string {
	c.t.Helper()
	var ls []haLease
	if err := json.Unmarshal([]byte(c.must("lease", "list", "--prefix", prefix, "--format", "json")), &ls); err != nil {
		c.t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range ls {
		m[l.ID] = l.State
	}
	return m
}

// haWait polls cond until it holds or d passes.
func haWait(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(250 * time.Millisecond)
	}
	return time.Since(start)
}

// TestHAKillNode: three nodes under mixed load from 16 clients; one is
// killed with SIGKILL. Every certificate a client got is in the
// inventory, every lease and kv version a client got is there, every
// expired lease's role is dropped exactly once (counted in PostgreSQL),
// no role is left without a lease, and the survivors carry on.
func TestHAKillNode(t *testing.T) {
	pg := haPostgres(t)
	dsn := pg.DSN("postgres")
	c := haStartCluster(t, dsn, 3)
	const role = "harole"
	db := c.haSetupEngines(dsn, role)

	// Each node reports its seal state with its next heartbeat (1 s).
	haWait(t, 10*time.Second, "operator members lists three alive, unsealed nodes", func() bool {
		ms := c.members()
		n := 0
		for _, m := range ms {
			if !m.Stale && !m.Sealed {
				n++
			}
		}
		return len(ms) == 3 && n == 3
	})

	var csrs []string
	for i := range 4 {
		csrs = append(csrs, writeCSR(t, c.dir, fmt.Sprintf("ha%d.example.test", i)))
	}
	stop, after := make(chan struct{}), make(chan struct{})
	load := c.haRunLoad(stop, after, csrs, role)
	time.Sleep(4 * time.Second)
	victim := c.nodes[1]
	haKill(t, victim)
	killedAt := time.Now()
	close(after)
	time.Sleep(6 * time.Second)
	close(stop)
	load.wait()
	t.Logf("load: %d calls succeeded, %d failed; after the kill: sign %d, creds %d, short creds %d, kv %d",
		load.ok.Load(), load.fail.Load(), load.afterOK[0].Load(), load.afterOK[1].Load(), load.afterOK[2].Load(), load.afterOK[3].Load())
	for _, e := range load.badErrs {
		t.Errorf("client error: %s", e)
	}
	for k := range 4 {
		if load.afterOK[k].Load() == 0 {
			t.Errorf("load kind %d made no successful call after the kill: the survivors did not carry on", k)
		}
	}

	// Every certificate a client got is in the inventory.
	var inv []struct {
		Serial string `json:"serial"`
	}
	if err := json.Unmarshal([]byte(c.must("ca", "list", "--format", "json")), &inv); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, r := range inv {
		if n, ok := new(big.Int).SetString(strings.ReplaceAll(r.Serial, ":", ""), 16); ok {
			have[n.String()] = true
		}
	}
	missing := 0
	for _, s := range load.serials {
		if !have[s.String()] {
			missing++
		}
	}
	if missing > 0 || len(load.serials) == 0 {
		t.Errorf("%d of %d certificates clients got are missing from the inventory", missing, len(load.serials))
	}

	// Every kv version a client was told about is there with its value.
	for g, vs := range load.kvAcked {
		path := fmt.Sprintf("kv/ha/g%d", g)
		var md struct {
			Current int64 `json:"current_version"`
		}
		if err := json.Unmarshal([]byte(c.must("kv", "metadata", "get", path, "--format", "json")), &md); err != nil {
			t.Fatal(err)
		}
		last := vs[len(vs)-1]
		if md.Current < last || md.Current > int64(len(vs)+load.kvFailed[g]) {
			t.Errorf("%s: current version %d; clients were told of %d versions up to %d (%d puts failed)", path, md.Current, len(vs), last, load.kvFailed[g])
		}
	}

	// Short leases expire; the survivors take over the dead node's claims
	// (bounded by the 15 s claim timeout) and revoke every one.
	// lease list shows open leases only: wait until none is left but the
	// long ones clients hold (short ones and mints the kill interrupted
	// are revoked), then look each short lease up.
	//
	// A long mint the victim had activated but not yet answered when it
	// died stays active: its lease is recorded and revoked at its expiry,
	// but its caller never got it (the call failed). Such a lease is told
	// apart by its hour-long TTL and an issue time at the kill; there can
	// be at most as many as long mints failed, and each is revoked below
	// to check that it drops its role like any other.
	orphan := map[string]bool{} // lease id -> an undelivered long mint
	isOrphan := func(id string) bool {
		v, seen := orphan[id]
		if !seen {
			var l haLease
			out, _, code := c.cli("lease", "lookup", id, "--format", "json")
			v = code == 0 && json.Unmarshal([]byte(out), &l) == nil && l.State == "active" &&
				l.ExpiresAt.Sub(l.IssuedAt) > 30*time.Minute &&
				l.IssuedAt.After(killedAt.Add(-10*time.Second)) && l.IssuedAt.Before(killedAt.Add(2*time.Second))
			orphan[id] = v
		}
		return v
	}
	left := func() []string {
		var ids []string
		for id := range c.leases("db/") {
			if _, long := load.leases[id]; !long && !isOrphan(id) {
				ids = append(ids, id)
			}
		}
		return ids
	}
	start := time.Now()
	for len(left()) > 0 && time.Since(start) < 45*time.Second {
		time.Sleep(250 * time.Millisecond)
	}
	if ids := left(); len(ids) > 0 {
		for _, id := range ids {
			out, _, _ := c.cli("lease", "lookup", id, "--format", "json")
			t.Errorf("lease not revoked within 45s: %s", out)
		}
		t.FailNow()
	}
	undelivered := 0
	for id, v := range orphan {
		if v {
			undelivered++
			c.must("lease", "revoke", id)
		}
	}
	if n := load.failKind[1].Load(); int64(undelivered) > n {
		t.Errorf("%d long leases issued at the kill that no client got, but only %d long mints failed", undelivered, n)
	}
	t.Logf("%d long leases were activated but not delivered when the node died; revoked", undelivered)
	took := time.Since(start)
	t.Logf("expired leases all revoked %.1fs after the load (%.1fs after the kill)", took.Seconds(), time.Since(killedAt).Seconds())
	final := c.leases("db/")
	for id := range load.leases {
		if st := final[id]; st != "active" {
			t.Errorf("long lease %s a client got: state %q, want active", id, st)
		}
	}
	for id := range load.short {
		var l haLease
		if err := json.Unmarshal([]byte(c.must("lease", "lookup", id, "--format", "json")), &l); err != nil || l.State != "revoked" {
			t.Errorf("short lease %s a client got: %+v (%v), want revoked", id, l, err)
		}
	}

	// PostgreSQL's side: every role left belongs to an active lease, and
	// each revoked lease dropped its role exactly once.
	roles := map[string]bool{}
	rows, err := db.Query("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", "sigil_"+role+"_%")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		roles[n] = true
	}
	rows.Close()
	activeNames := map[string]bool{}
	for _, n := range load.leases {
		activeNames[n] = true
		if !roles[n] {
			t.Errorf("role %s of an active lease is gone", n)
		}
	}
	for n := range roles {
		if !activeNames[n] {
			t.Errorf("orphan role %s: no active lease a client was given", n)
		}
	}
	drops := map[string]int{}
	rows, err = db.Query("SELECT name, count(*) FROM ha_drops GROUP BY name")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for rows.Next() {
		var n string
		var k int
		if err := rows.Scan(&n, &k); err != nil {
			t.Fatal(err)
		}
		drops[n] = k
		total += k
	}
	rows.Close()
	for n, k := range drops {
		if k != 1 {
			t.Errorf("role %s dropped %d times", n, k)
		}
	}
	for _, n := range load.short {
		if drops[n] != 1 {
			t.Errorf("expired lease's role %s: %d effective revocations, want 1", n, drops[n])
		}
	}
	// Beyond the short leases, only mints whose answer the kill lost
	// may have had a role to drop.
	if total < len(load.short) || total > len(load.short)+int(load.fail.Load()) {
		t.Errorf("PostgreSQL counted %d revocations; clients got %d short leases and %d calls failed", total, len(load.short), load.fail.Load())
	}
	t.Logf("leases: %d long, %d short from clients; %d effective DROP ROLEs", len(load.leases), len(load.short), total)

	// The dead node is still listed, and stale once its heartbeat is
	// older than the liveness bound (15 s).
	haWait(t, 30*time.Second, "the killed node listed as stale", func() bool {
		for _, m := range c.members() {
			if m.GRPCAddr == victim.grpcAddr {
				return m.Stale
			}
		}
		return false
	})
	ms := c.members()
	if len(ms) != 3 {
		t.Fatalf("members after the kill: %d, want 3", len(ms))
	}
	for _, m := range ms {
		if want := m.GRPCAddr == victim.grpcAddr; m.Stale != want {
			t.Errorf("member %s (%s): stale %v, want %v", m.ID, m.GRPCAddr, m.Stale, want)
		}
	}
}

// haSimpleLoad runs goroutines that alternately write kv versions and sign
// certificates through every node until stop closes, recording what
// clients were told and every failure's message.
type haSimpleLoad struct {
	mu       sync.Mutex
	serials  []*big.Int
	kvAcked  map[int][]int64
	kvFailed map[int]int
	failures []string
	wait     func()
}

func (c *haCluster) haSimpleLoad(stop <-chan struct{}, n int, csr string) *haSimpleLoad {
	l := &haSimpleLoad{kvAcked: map[int][]int64{}, kvFailed: map[int]int{}}
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				sign := g%2 == 0
				args := []string{"kv", "put", fmt.Sprintf("kv/pr/g%d", g), fmt.Sprintf("n=%d", seq), "--format", "json"}
				if sign {
					args = []string{"ca", "sign", "--csr", csr, "--ttl", "1h"}
				}
				out, stderr, code := haRun(c.t, c.addrs(), c.token, c.listenerCA, args...)
				l.mu.Lock()
				switch {
				case code != 0:
					l.failures = append(l.failures, stderr)
					if !sign {
						l.kvFailed[g]++
					}
				case sign:
					if s, ok := haSerial(out); ok {
						l.serials = append(l.serials, s)
					}
				default:
					var v struct {
						Version int64 `json:"version"`
					}
					if json.Unmarshal([]byte(out), &v) == nil && v.Version > 0 {
						l.kvAcked[g] = append(l.kvAcked[g], v.Version)
					}
				}
				l.mu.Unlock()
				if code != 0 {
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
	}
	l.wait = wg.Wait
	return l
}

// haCheckNothingLost checks every certificate and kv version clients were
// told about is stored.
func (c *haCluster) haCheckNothingLost(serials []*big.Int, kvAcked map[int][]int64, kvFailed map[int]int, prefix string) {
	t := c.t
	t.Helper()
	var inv []struct {
		Serial string `json:"serial"`
	}
	if err := json.Unmarshal([]byte(c.must("ca", "list", "--format", "json")), &inv); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, r := range inv {
		if n, ok := new(big.Int).SetString(strings.ReplaceAll(r.Serial, ":", ""), 16); ok {
			have[n.String()] = true
		}
	}
	for _, s := range serials {
		if !have[s.String()] {
			t.Errorf("certificate %x a client got is missing from the inventory", s)
		}
	}
	for g, vs := range kvAcked {
		path := fmt.Sprintf("%s/g%d", prefix, g)
		var md struct {
			Current int64 `json:"current_version"`
		}
		if err := json.Unmarshal([]byte(c.must("kv", "metadata", "get", path, "--format", "json")), &md); err != nil {
			t.Fatal(err)
		}
		if last := vs[len(vs)-1]; md.Current < last || md.Current > int64(len(vs)+kvFailed[g]) {
			t.Errorf("%s: current version %d; clients were told of %d versions up to %d (%d puts failed)", path, md.Current, len(vs), last, kvFailed[g])
		}
	}
}

// TestHAPostgresRestart: PostgreSQL is stopped under load and started
// again. While it is down every node reports not ready and calls fail
// with a clear Unavailable; afterwards the nodes recover by themselves
// within seconds and nothing a client was told about is lost.
func TestHAPostgresRestart(t *testing.T) {
	pg := haPostgres(t)
	c := haStartCluster(t, pg.DSN("postgres"), 2)
	haACMENonceShared(t, c.nodes[0], c.nodes[1])
	c.must("engine", "enable", "kv", "--mount", "kv")
	csr := writeCSR(t, c.dir, "pr.example.test")
	stop := make(chan struct{})
	load := c.haSimpleLoad(stop, 4, csr)
	time.Sleep(2 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pg.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	downAt := time.Now()
	for _, d := range c.nodes {
		took := haWait(t, 10*time.Second, "/readyz not ready while PostgreSQL is down", func() bool { return haReady(t, d) == 503 })
		t.Logf("%s: not ready %.1fs after PostgreSQL stopped", d.grpcAddr, took.Seconds())
	}
	// A call now fails at once with Unavailable naming the cause.
	_, stderr, code := c.cliOn(c.nodes[0], "kv", "get", "kv/pr/g1")
	if code == 0 || !strings.Contains(stderr, "Unavailable") || !strings.Contains(stderr, "storage unreachable") {
		t.Errorf("kv get while PostgreSQL is down: code %d: %s; want Unavailable, storage unreachable", code, stderr)
	}
	time.Sleep(time.Until(downAt.Add(3 * time.Second)))
	if err := pg.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	upAt := time.Now()
	for _, d := range c.nodes {
		took := haWait(t, 15*time.Second, "a node serves again after PostgreSQL restarted", func() bool {
			_, _, code := c.cliOn(d, "kv", "put", "kv/pr/probe", "x=1")
			return code == 0
		})
		t.Logf("%s: serving %.1fs after PostgreSQL started", d.grpcAddr, took.Seconds())
		if st := haReady(t, d); st != 200 {
			t.Errorf("%s: /readyz %d after recovery", d.grpcAddr, st)
		}
	}
	time.Sleep(time.Until(upAt.Add(2 * time.Second)))
	close(stop)
	load.wait()
	bad := 0
	for _, f := range load.failures {
		if !strings.Contains(f, "Unavailable") {
			bad++
			t.Errorf("a call failed without Unavailable: %s", f)
		}
	}
	t.Logf("load: %d certificates, %d kv writers; %d calls failed while PostgreSQL was down", len(load.serials), len(load.kvAcked), len(load.failures))
	c.haCheckNothingLost(load.serials, load.kvAcked, load.kvFailed, "kv/pr")
}

// haACMENonceShared: on PostgreSQL, ACME nonces are the cluster's: one
// handed out by node a is accepted once by node b (the closed default
// provisioner then asks for an account binding, which is past the nonce),
// and refused as used when replayed to a.
func haACMENonceShared(t *testing.T, a, b *devServer) {
	t.Helper()
	resp, err := a.httpClient(t).Head("https://" + a.httpsAddr + "/acme/new-nonce")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	nonce := resp.Header.Get("Replay-Nonce")
	key := acmeAttackNewKey(t)
	ub := "https://" + b.httpsAddr + "/acme/new-account"
	if resp, body := acmeAttackPost(t, b.httpClient(t), ub, key.sign(t, `{"termsOfServiceAgreed":true}`, ub, nonce)); strings.Contains(body, "badNonce") || resp.StatusCode/100 == 5 {
		t.Fatalf("node b refused node a's nonce: %d %s", resp.StatusCode, body)
	}
	ua := "https://" + a.httpsAddr + "/acme/new-account"
	if resp, body := acmeAttackPost(t, a.httpClient(t), ua, key.sign(t, `{"termsOfServiceAgreed":true}`, ua, nonce)); !strings.Contains(body, "badNonce") {
		t.Fatalf("node a accepted a nonce node b had used: %d %s", resp.StatusCode, body)
	}
}

// TestHAStandbyPromotion: the nodes' DSN names a primary and its
// streaming standby with target_session_attrs=read-write. The primary is
// stopped and the standby promoted: every node reconnects to it without a
// restart and the data written before is there.
func TestHAStandbyPromotion(t *testing.T) {
	pg := haPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	standby, err := pg.Standby(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Stop)
	primaryDSN, standbyDSN := pg.DSN("postgres"), standby.DSN("postgres")
	p1, p2 := fmt.Sprintf("127.0.0.1:%d/", pg.Port()), fmt.Sprintf("127.0.0.1:%d/", standby.Port())
	multi := strings.Replace(primaryDSN, p1, strings.TrimSuffix(p1, "/")+","+p2, 1) + "&target_session_attrs=read-write"

	c := haStartCluster(t, multi, 2)
	c.must("engine", "enable", "kv", "--mount", "kv")
	for i := 1; i <= 5; i++ {
		c.must("kv", "put", "kv/sb/app", fmt.Sprintf("n=%d", i))
	}
	serial, ok := haSerial(c.must("ca", "sign", "--csr", writeCSR(t, c.dir, "sb.example.test"), "--ttl", "1h"))
	if !ok {
		t.Fatal("ca sign printed no certificate")
	}

	// Replication is asynchronous: let the standby replay everything
	// before the primary goes, as an operator's planned failover does.
	pdb, err := sql.Open("pgx", primaryDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pdb.Close()
	sdb, err := sql.Open("pgx", standbyDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	var lsn string
	if err := pdb.QueryRow("SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	haWait(t, 20*time.Second, "standby replayed the primary's WAL", func() bool {
		var caught bool
		err := sdb.QueryRow("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&caught)
		return err == nil && caught
	})

	if err := pg.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range c.nodes {
		took := haWait(t, 20*time.Second, "a node writes to the promoted standby", func() bool {
			_, _, code := c.cliOn(d, "kv", "put", "kv/sb/after", "from="+d.grpcAddr)
			return code == 0
		})
		t.Logf("%s: writing to the promoted standby %.1fs after promotion", d.grpcAddr, took.Seconds())
		if st := haReady(t, d); st != 200 {
			t.Errorf("%s: /readyz %d after promotion", d.grpcAddr, st)
		}
	}
	if out := c.must("kv", "get", "kv/sb/app", "--field", "n"); strings.TrimSpace(out) != "5" {
		t.Errorf("kv written before the failover: n = %q, want 5", out)
	}
	c.haCheckNothingLost([]*big.Int{serial}, nil, nil, "kv/sb")
	var inRecovery bool
	if err := sdb.QueryRow("SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		t.Errorf("the standby is still in recovery (%v)", err)
	}
}
