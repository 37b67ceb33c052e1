// Package agent is `sigil agent`: it enrols the node with a join token,
// keeps and renews the node SVID, syncs the registration entries parented
// to the node, mints their SVIDs from keys it makes, and serves them to
// attested local processes over the SPIFFE Workload API. It talks to the
// server only through the public gRPC API, authenticated by its node SVID.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	"github.com/sigil-ca/sigil/agent/render"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/registration"
)

// Config is the agent's configuration.
type Config struct {
	// Server is the gRPC address HOST:PORT; CACert the PEM file that
	// verifies it.
	Server string `yaml:"server"`
	CACert string `yaml:"cacert"`
	// DataDir keeps the node SVID (0600).
	DataDir string `yaml:"data"`
	// Socket is the Workload API's unix socket; its directory must not be
	// world-writable.
	Socket string `yaml:"socket"`
	// JoinToken and SPIFFEID enrol a node that has no SVID yet.
	JoinToken string `yaml:"-"`
	SPIFFEID  string `yaml:"spiffe_id"`
	// HealthAddr serves /healthz and /metrics ("" disables).
	HealthAddr string `yaml:"health_addr"`
	// SyncInterval is how often entries are fetched (default 5s).
	SyncInterval time.Duration `yaml:"sync_interval"`
	// ProcRoot is /proc (tests may not change it; it exists for clarity).
	ProcRoot string `yaml:"-"`

	// Render is the secrets-delivery part of agent.yaml (templates:,
	// allow_disk, revoke_on_exit, kv_refresh, and exec: for sigil exec):
	// the agent renders the templates with its node SVID's connection.
	Render render.Config `yaml:",inline"`
}

// Backoff bounds for retries while the server is unreachable.
const (
	minBackoff          = time.Second
	maxBackoff          = 30 * time.Second
	defaultSyncInterval = 5 * time.Second
)

// cachedSVID is one entry's current X.509-SVID and the key the agent made
// for it (kept in memory only).
type cachedSVID struct {
	entry   *registration.Entry
	svid    *x509svid.SVID
	keyDER  []byte // PKCS#8
	renewAt time.Time
}

// state is what the agent serves, swapped under mu; changed is closed
// and replaced on every change so streams wake up.
type state struct {
	mu       sync.RWMutex
	entries  map[string]*registration.Entry
	svids    map[string]*cachedSVID
	td       spiffeid.TrustDomain
	x509     *x509bundle.Bundle
	jwks     *jwtbundle.Bundle
	changed  chan struct{}
	lastSync time.Time
	failures int64
	// jwts caches JWT-SVIDs by entry and audience, so repeated fetches
	// cost the server nothing and an outage is bridged until they expire.
	jwts map[string]cachedJWT
	// renderFailures counts failed template renders; failing holds the
	// templates whose last render failed.
	renderFailures int64
	failing        map[string]bool
}

// cachedJWT is a JWT-SVID the agent holds for reuse.
type cachedJWT struct {
	token        string
	renewAt, exp time.Time
}

// maxCachedJWTs bounds the JWT-SVID cache (audiences come from workloads).
const maxCachedJWTs = 1024

func (s *state) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Agent is a running agent.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	node *nodeIdentity
	tls  *tls.Config
	st   *state

	// connMu guards conn, which is replaced whenever the node SVID
	// changes: a TLS connection keeps presenting the certificate it was
	// opened with, so a renewed SVID needs a new connection.
	connMu sync.Mutex
	conn   *grpc.ClientConn
}

// dial opens a connection presenting the current node SVID and replaces
// the previous one.
func (a *Agent) dial() error {
	// gRPC's own reconnect backoff grows to two minutes; the agent's sync
	// loop already backs off, so reconnect attempts stay within its cap.
	conn, err := grpc.NewClient(a.cfg.Server, grpc.WithTransportCredentials(credentials.NewTLS(a.tls)),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: minBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxBackoff},
			MinConnectTimeout: 5 * time.Second}))
	if err != nil {
		return fmt.Errorf("agent: connect to %s: %w", a.cfg.Server, err)
	}
	a.connMu.Lock()
	old := a.conn
	a.conn = conn
	a.connMu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// client is the current connection.
func (a *Agent) client() *grpc.ClientConn {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	return a.conn
}

func (a *Agent) close() {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	if a.conn != nil {
		a.conn.Close()
	}
}

// New checks the configuration, loads or enrols the node SVID and connects
// to the server.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Agent, error) {
	if cfg.Server == "" || cfg.CACert == "" || cfg.DataDir == "" || cfg.Socket == "" {
		return nil, errors.New("agent: --server, --cacert, --data and --socket are required")
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = defaultSyncInterval
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if err := checkSocketDir(cfg.Socket); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: data directory: %w", err)
	}
	caPEM, err := os.ReadFile(cfg.CACert)
	if err != nil {
		return nil, fmt.Errorf("agent: --cacert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("agent: --cacert %s holds no PEM certificate", cfg.CACert)
	}
	a := &Agent{cfg: cfg, log: log, node: &nodeIdentity{dir: cfg.DataDir},
		st: &state{entries: map[string]*registration.Entry{}, svids: map[string]*cachedSVID{}, jwts: map[string]cachedJWT{}, failing: map[string]bool{}, changed: make(chan struct{})}}
	a.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, GetClientCertificate: a.node.clientCertificate}
	if err := a.dial(); err != nil {
		return nil, err
	}
	have, err := a.node.load()
	if err != nil {
		a.close()
		return nil, err
	}
	switch {
	case have:
		_, id := a.node.current()
		if cfg.SPIFFEID != "" && cfg.SPIFFEID != id.String() {
			a.close()
			return nil, fmt.Errorf("agent: %s holds the SVID of %s, not --spiffe-id %s", cfg.DataDir, id, cfg.SPIFFEID)
		}
		log.Info("reusing the node SVID", "spiffe_id", id.String(), "not_after", a.nodeNotAfter())
	case cfg.JoinToken == "" || cfg.SPIFFEID == "":
		a.close()
		return nil, fmt.Errorf("agent: %s holds no node SVID: the first start needs --join-token and --spiffe-id", cfg.DataDir)
	default:
		ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := a.node.enroll(ectx, sigilv1.NewIdentityServiceClient(a.client()), cfg.JoinToken, cfg.SPIFFEID)
		cancel()
		if err == nil {
			err = a.dial() // the enrolment connection presented no SVID
		}
		if err != nil {
			a.close()
			return nil, err
		}
		log.Info("enrolled", "spiffe_id", cfg.SPIFFEID, "not_after", a.nodeNotAfter())
	}
	return a, nil
}

func (a *Agent) nodeNotAfter() time.Time {
	c, _ := a.node.current()
	return c.Leaf.NotAfter
}

// checkSocketDir refuses a socket whose directory anyone may write to:
// another user could replace the socket with their own and impersonate
// the agent to workloads.
func checkSocketDir(socket string) error {
	dir := socket[:max(0, lastSlash(socket))]
	if dir == "" {
		dir = "."
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("agent: --socket directory: %w", err)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return fmt.Errorf("agent: --socket %s: directory %s is world-writable (mode %v); use a directory only the agent's user can write", socket, dir, fi.Mode().Perm())
	}
	return nil
}

func lastSlash(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

// Run serves the Workload API (and health), keeps identities fresh and
// renders the configured templates until ctx ends. A template
// configuration that cannot work (a disk-backed destination without
// allow_disk, a template that does not parse) stops the agent with its
// error.
func (a *Agent) Run(ctx context.Context) error {
	defer a.close()
	if len(a.cfg.Render.Templates) == 0 {
		return a.serve(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var renderErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.renderTemplates(ctx); err != nil {
			renderErr = err
			cancel()
		}
	}()
	err := a.serve(ctx)
	// The renderer revokes its leases on its way out, over the node
	// connection: wait for it before that connection closes.
	cancel()
	<-done
	if renderErr != nil {
		return renderErr
	}
	return err
}

// serve is Run without the templates.
func (a *Agent) serve(ctx context.Context) error {
	var health *http.Server
	if a.cfg.HealthAddr != "" {
		hl, err := net.Listen("tcp", a.cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("agent: --health-addr: %w", err)
		}
		health = &http.Server{Handler: a.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
		go health.Serve(hl)
		defer health.Close()
	}
	// The socket opens after the first sync: until then the agent has
	// nothing to serve (it keeps no workload SVID on disk).
	backoff := minBackoff
	for {
		err := a.syncOnce(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		a.log.Warn("first sync with the server failed", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(jitter(backoff)):
		}
		backoff = min(backoff*2, maxBackoff)
	}
	if fi, err := os.Lstat(a.cfg.Socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("agent: --socket %s exists and is not a socket", a.cfg.Socket)
		}
		os.Remove(a.cfg.Socket) // a stale socket of an earlier run
	}
	l, err := net.Listen("unix", a.cfg.Socket)
	if err != nil {
		return fmt.Errorf("agent: listen on %s: %w", a.cfg.Socket, err)
	}
	defer os.Remove(a.cfg.Socket)
	// Any local process may connect; attestation decides what it gets.
	if err := os.Chmod(a.cfg.Socket, 0o666); err != nil {
		l.Close()
		return fmt.Errorf("agent: socket mode: %w", err)
	}
	srv := grpc.NewServer(grpc.Creds(peerCredentials{}))
	registerWorkloadAPI(srv, a)
	go func() {
		if err := srv.Serve(l); err != nil {
			a.log.Error("workload API stopped", "err", err)
		}
	}()
	defer srv.Stop()
	a.log.Info("workload API listening", "socket", a.cfg.Socket, "health", a.cfg.HealthAddr)
	return a.loop(ctx)
}

// loop syncs and renews, backing off while the server fails.
func (a *Agent) loop(ctx context.Context) error {
	backoff := minBackoff
	for {
		wait := a.cfg.SyncInterval
		if err := a.syncOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.st.mu.Lock()
			a.st.failures++
			a.st.mu.Unlock()
			a.log.Warn("sync with the server failed; serving cached identities", "err", err, "retry_in", backoff)
			wait = jitter(backoff)
			backoff = min(backoff*2, maxBackoff)
		} else {
			backoff = minBackoff
			if next := a.nextRenewal(); !next.IsZero() {
				wait = max(min(wait, time.Until(next)), 100*time.Millisecond)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// jitter is d less up to a fifth at random.
func jitter(d time.Duration) time.Duration {
	if span := int64(d / 5); span > 0 {
		if r, err := rand.Int(rand.Reader, big.NewInt(span)); err == nil {
			return d - time.Duration(r.Int64())
		}
	}
	return d
}

func (a *Agent) nextRenewal() time.Time {
	a.st.mu.RLock()
	defer a.st.mu.RUnlock()
	var next time.Time
	for _, c := range a.st.svids {
		if next.IsZero() || c.renewAt.Before(next) {
			next = c.renewAt
		}
	}
	return next
}

// syncOnce renews the node SVID when due, then fetches the bundle and the
// entries and mints what is missing or due.
func (a *Agent) syncOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if time.Now().After(a.node.renewDue()) {
		if err := a.node.renew(ctx, sigilv1.NewCAServiceClient(a.client())); err != nil {
			return err
		}
		if err := a.dial(); err != nil {
			return err
		}
		a.log.Info("renewed the node SVID", "not_after", a.nodeNotAfter())
	}
	client := sigilv1.NewAgentServiceClient(a.client())
	b, err := client.GetBundle(ctx, &sigilv1.GetBundleRequest{})
	if err != nil {
		return fmt.Errorf("agent: fetch bundle: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(b.GetTrustDomain())
	if err != nil {
		return fmt.Errorf("agent: bundle trust domain: %w", err)
	}
	xb, err := x509bundle.Parse(td, []byte(b.GetX509RootsPem()))
	if err != nil {
		return fmt.Errorf("agent: X.509 bundle: %w", err)
	}
	jb, err := jwtbundle.Parse(td, b.GetJwks())
	if err != nil {
		return fmt.Errorf("agent: JWT bundle: %w", err)
	}
	list, err := client.FetchEntries(ctx, &sigilv1.FetchEntriesRequest{})
	if err != nil {
		return fmt.Errorf("agent: fetch entries: %w", err)
	}
	entries := map[string]*registration.Entry{}
	for _, w := range list.GetEntries() {
		entries[w.GetId()] = &registration.Entry{ID: w.GetId(), ParentID: w.GetParentId(), SPIFFEID: w.GetSpiffeId(),
			Selectors: w.GetSelectors(), TTL: time.Duration(w.GetTtlSeconds()) * time.Second}
	}
	a.st.mu.Lock()
	changed := !a.st.x509.Equal(xb) || !a.st.jwks.Equal(jb) || len(entries) != len(a.st.entries)
	a.st.td, a.st.x509, a.st.jwks, a.st.entries = td, xb, jb, entries
	for id := range a.st.svids {
		if _, ok := entries[id]; !ok {
			delete(a.st.svids, id)
			changed = true
		}
	}
	due := []*registration.Entry{}
	now := time.Now()
	for id, e := range entries {
		if c, ok := a.st.svids[id]; !ok || !now.Before(c.renewAt) || c.entry.SPIFFEID != e.SPIFFEID {
			due = append(due, e)
		}
	}
	a.st.mu.Unlock()

	var firstErr error
	for _, e := range due {
		c, err := a.mint(ctx, client, e)
		if err != nil {
			a.log.Warn("mint SVID failed", "entry", e.ID, "spiffe_id", e.SPIFFEID, "err", err)
			firstErr = cmpErr(firstErr, err)
			continue
		}
		a.st.mu.Lock()
		a.st.svids[e.ID] = c
		a.st.mu.Unlock()
		changed = true
		a.log.Info("minted SVID", "entry", e.ID, "spiffe_id", e.SPIFFEID, "not_after", c.svid.Certificates[0].NotAfter, "renew_at", c.renewAt)
	}
	a.st.mu.Lock()
	if firstErr == nil {
		a.st.lastSync = time.Now()
	}
	if changed {
		a.st.notify()
	}
	a.st.mu.Unlock()
	return firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// mint makes a key here and has the server issue entry e's SVID for it.
func (a *Agent) mint(ctx context.Context, client sigilv1.AgentServiceClient, e *registration.Entry) (*cachedSVID, error) {
	key, csr, err := newCSR(e.SPIFFEID)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := client.MintX509SVID(ctx, &sigilv1.MintX509SVIDRequest{EntryId: e.ID, Csr: csr})
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("agent: encode key: %w", err)
	}
	svid, err := x509svid.ParseRaw(pemToDER([]byte(resp.GetCertificatePem()+resp.GetChainPem())), keyDER)
	if err != nil {
		return nil, fmt.Errorf("agent: SVID for entry %s: %w", e.ID, err)
	}
	if svid.ID.String() != e.SPIFFEID {
		return nil, fmt.Errorf("agent: server issued %s for entry %s of %s", svid.ID, e.ID, e.SPIFFEID)
	}
	// The server backdates NotBefore, so half the lifetime is measured
	// from when the SVID arrived.
	return &cachedSVID{entry: e, svid: svid, keyDER: keyDER, renewAt: renewAt(start, svid.Certificates[0].NotAfter)}, nil
}
