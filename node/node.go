// Package node assembles and runs one Sigil node below the transports: the
// data directory's lock, storage, the barrier, PKCS#11 custody, cluster
// membership and the core, opened in order and closed in reverse. The
// server binds its listeners and serves over a Node; nothing here knows
// gRPC or HTTP (the Vault split of http/sys_init.go over vault/init.go).
package node

import (
	"context"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/cluster"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/internal/atomicfile"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/internal/flock"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/snapshot"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/storage/backends"
	"github.com/sigil-ca/sigil/storage/postgres"
)

// LockFile is the data directory's lock, held while a node runs.
const LockFile = "sigil.lock"

// CACertFile is where a node writes its root certificate at start, for
// operators and clients to trust.
const CACertFile = "ca.pem"

// Options are what Start needs beyond the data directory New locked.
type Options struct {
	// Config is the validated configuration; its DataDir is the one New
	// locked and its PublicURL is final (the transports derive it from a
	// bound port when it is not set).
	Config  config.Config
	Logger  *slog.Logger
	Version string
	// GRPCAddr and HTTPSAddr are the bound listener addresses this node
	// advertises in its cluster member record.
	GRPCAddr, HTTPSAddr string
	// ACMEBaseURL is the ACME directory's URL when acme.base_url is not
	// set: the transport serving it knows its address.
	ACMEBaseURL func() string
	// IssuanceRefused counts issuance the CA refused (a metric); optional.
	IssuanceRefused func(reason string)
}

// Node is one Sigil node: New locks its data directory, Start opens the
// rest, Close releases everything in reverse order, the lock last.
type Node struct {
	dir     string
	lock    *flock.Lock
	cfg     config.Config
	log     *slog.Logger
	version string

	store   storage.Store
	barrier *barrier.Barrier
	// p11 is the PKCS#11 token when one is configured; it is opened at
	// start because it can unseal the node.
	p11     *hsm.PKCS11
	cluster *cluster.Node
	core    *core.Core

	rootToken, caCertPath string

	started   bool
	closeOnce sync.Once
	closers   []func() error // run in reverse order by Close
}

// New creates the data directory if needed and takes its exclusive lock, so
// two servers never share one embedded database and keystore. It comes
// before the listeners bind, so a second server on the same directory is
// refused by name (and the holder's pid) rather than by a port clash.
func New(dataDir string) (*Node, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	l, holder, err := flock.TryAcquirePID(filepath.Join(dataDir, LockFile))
	if errors.Is(err, flock.ErrLocked) {
		return nil, fmt.Errorf("data directory %s is in use by another sigil server (pid %s); stop it or use another --data", dataDir, holder)
	}
	if err != nil {
		return nil, err
	}
	n := &Node{dir: dataDir, lock: l}
	n.closers = append(n.closers, func() error { n.lock.Release(); return nil })
	return n, nil
}

// Start opens storage (migrating it), the barrier, the PKCS#11 token when
// one is configured, cluster membership and the core; unseals when it can
// (dev mode, HSM auto-unseal); in dev mode bootstraps the CA and root
// token; and writes the root certificate to the data directory when there
// is one. It does not join the cluster yet (Join). Start runs once; on
// error the caller closes the node, which releases whatever Start opened.
func (n *Node) Start(ctx context.Context, o Options) error {
	if n.started {
		return errors.New("node: already started")
	}
	n.started = true
	if o.Config.DataDir != n.dir {
		return fmt.Errorf("node: configured data directory %s is not the locked %s", o.Config.DataDir, n.dir)
	}
	n.cfg, n.log, n.version = o.Config, o.Logger, o.Version
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	store, fresh, err := backends.Open(ctx, n.cfg, n.log)
	if err != nil {
		return err
	}
	n.store = store
	n.closers = append(n.closers, store.Close)
	n.barrier = barrier.New(adapt.Keyring(store.Keyring()))
	n.closers = append(n.closers, func() error { n.barrier.Lock(); return nil })
	if n.cfg.HSM.URI != "" {
		p, err := hsm.OpenPKCS11(ctx, n.cfg.HSM.URI, n.log)
		if err != nil {
			return err
		}
		n.p11 = p
		n.closers = append(n.closers, p.Close)
	}
	if err := n.newCluster(o); err != nil {
		return err
	}
	n.core = core.New(core.Options{Config: n.cfg, Store: store, Barrier: n.barrier, HSM: n.p11, Logger: n.log,
		IssuanceRefused: o.IssuanceRefused, Wiring: core.Wiring{
			ACME: func(u *core.Unsealed) (*acme.Server, error) { return n.core.OpenACME(u, o.ACMEBaseURL) },
			Once: n.cluster.Singleton, ClusterHealthy: n.cluster.Healthy,
		}})
	n.closers = append(n.closers, func() error { n.core.Close(); return nil })
	if err := n.core.Start(ctx, fresh); err != nil {
		return err
	}
	if n.cfg.Dev {
		if n.rootToken, err = n.core.DevBootstrap(ctx); err != nil {
			return err
		}
	}
	return n.writeRoot()
}

// newCluster makes this node's cluster membership, before the core (whose
// background work runs its singletons through it). On PostgreSQL the node
// shares the members table; on SQLite it is a cluster of one whose
// heartbeat is a storage ping.
func (n *Node) newCluster(o Options) error {
	id, err := cluster.NodeID(n.dir)
	if err != nil {
		return err
	}
	cfg := cluster.Config{
		Self:   cluster.Member{ID: id, GRPCAddr: o.GRPCAddr, HTTPSAddr: o.HTTPSAddr, PublicURL: n.cfg.PublicURL, Version: n.version},
		Sealed: func() bool { return n.core.Current() == nil },
		Logger: n.log,
		Ping:   n.store.Ping,
	}
	if db, ok := n.store.(interface{ DB() *sql.DB }); ok && n.store.Backend() == "postgres" {
		cfg.DB = db.DB()
		cfg.DropIdle = func() { postgres.DropIdle(cfg.DB) }
	}
	n.cluster = cluster.New(cfg)
	return nil
}

// writeRoot writes the root certificate to the data directory when the
// core is unsealed with a CA (dev mode, auto-unseal, a restart).
func (n *Node) writeRoot() error {
	u := n.core.Current()
	if u == nil || u.CA.Root() == nil {
		return nil
	}
	path := filepath.Join(n.dir, CACertFile)
	root := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.CA.Root().Raw})
	if err := atomicfile.Write(path, root, 0o644); err != nil {
		return fmt.Errorf("write root certificate: %w", err)
	}
	n.caCertPath = path
	return nil
}

// Join registers this node in the cluster and heartbeats until Close. The
// server calls it last, once its transports are ready to serve, so the
// member record never advertises a node that failed to start.
func (n *Node) Join() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = n.cluster.Run(ctx)
	}()
	n.closers = append(n.closers, func() error { cancel(); <-done; return nil })
}

// Core is the node's core: the seal state and, while unsealed, the graph.
func (n *Node) Core() *core.Core { return n.core }

// Cluster is the node's cluster membership.
func (n *Node) Cluster() *cluster.Node { return n.cluster }

// Barrier is the node's barrier (tests inspect its rewrap registry).
func (n *Node) Barrier() *barrier.Barrier { return n.barrier }

// StorageBackend names the storage backend: "sqlite" or "postgres".
func (n *Node) StorageBackend() string { return n.store.Backend() }

// Custody names where keys are held: "pkcs11" or "software".
func (n *Node) Custody() string {
	if n.p11 != nil {
		return "pkcs11"
	}
	return "software"
}

// RootToken is the dev root token, "" outside dev mode.
func (n *Node) RootToken() string { return n.rootToken }

// CACertPath is where Start wrote the root certificate, "" when the node
// started sealed or without a CA.
func (n *Node) CACertPath() string { return n.caCertPath }

// ReopenAuditFile reopens the audit file after logrotate moved it (SIGHUP).
func (n *Node) ReopenAuditFile() error {
	u := n.core.Current()
	if u == nil || u.AuditFile == nil {
		return nil
	}
	return u.AuditFile.Reopen()
}

// Snapshot writes an online backup of the embedded store to w. PostgreSQL
// is backed up with its own tools, so a node on it refuses.
func (n *Node) Snapshot(ctx context.Context, w io.Writer) (snapshot.Header, error) {
	if n.store.Backend() != "sqlite" {
		return snapshot.Header{}, errs.New(errs.FailedPrecondition, "snapshot save copies the embedded SQLite store, and this server stores its data in PostgreSQL: back up the database itself with pg_dump (logical) or pg_basebackup (physical); see docs/operations.md")
	}
	dbOf, ok := n.store.(interface{ DB() *sql.DB })
	if !ok {
		return snapshot.Header{}, errs.New(errs.Internal, "snapshot: the store exposes no database")
	}
	hdr, err := snapshot.Save(ctx, dbOf.DB(), n.dir, n.version, w)
	if err != nil {
		return snapshot.Header{}, errs.Wrap(errs.Internal, "snapshot save", err)
	}
	return hdr, nil
}

// Close leaves the cluster, seals the core, closes the PKCS#11 token,
// locks the barrier, closes storage and releases the data directory's
// lock, in that order (the reverse of opening), whatever Start reached.
// It is safe to call more than once.
func (n *Node) Close() error {
	var failed []error
	n.closeOnce.Do(func() {
		for i := len(n.closers) - 1; i >= 0; i-- {
			if err := n.closers[i](); err != nil {
				failed = append(failed, err)
			}
		}
	})
	return errors.Join(failed...)
}
