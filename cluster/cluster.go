// Package cluster lets several `sigil server` nodes share one PostgreSQL
// database: each node registers itself in a members table and heartbeats
// there, knows whether it can reach the database (so it stops serving
// instead of answering from stale memory), and runs work that must happen
// once in the cluster under a PostgreSQL advisory lock (Singleton). On the
// embedded SQLite store there is one node: the members list is this node
// alone and singletons run locally.
//
// The package talks to the database directly (database/sql) rather than
// through storage's repositories: membership and locks are PostgreSQL
// mechanics, not domain data, and must keep working while sealed.
package cluster

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults. A node heartbeats every HeartbeatInterval; a member whose last
// heartbeat is older than StaleAfter is presumed dead. A node whose last
// successful database round trip is older than DownAfter refuses calls.
const (
	DefaultHeartbeatInterval = time.Second
	DefaultStaleAfter        = 15 * time.Second
	DefaultDownAfter         = 3 * time.Second
)

// ErrStorageUnavailable is returned by Healthy while the database cannot be
// reached: the node must not answer from memory (token cache, lease
// counters) what another node may have changed meanwhile.
var ErrStorageUnavailable = errors.New("storage unreachable: this node refuses calls until the database answers again")

// ErrStorageLost is what a call that failed because the database stopped
// answering during it reports. It may have done part of its work: unlike
// ErrStorageUnavailable, its message does not tell clients that nothing ran.
var ErrStorageLost = errors.New("storage became unreachable during the call; it may or may not have taken effect")

// Member is one node as registered in the members table.
type Member struct {
	ID            string
	GRPCAddr      string
	HTTPSAddr     string
	PublicURL     string
	Version       string
	Sealed        bool
	StartedAt     time.Time
	LastHeartbeat time.Time
	// Stale: the last heartbeat is older than StaleAfter (by the database
	// clock, so node clocks do not matter).
	Stale bool
}

// Config configures a Node.
type Config struct {
	// DB is the shared PostgreSQL database; nil runs a single node.
	DB *sql.DB
	// Self describes this node; ID is filled by NodeID when empty.
	Self Member
	// Sealed reports the node's seal state for each heartbeat.
	Sealed func() bool
	// DropIdle, if set, closes the database pool's idle connections. It is
	// called when a heartbeat fails: connections to a database that went
	// away are dead, and each would otherwise fail one call after the
	// database is back.
	DropIdle func()
	// Ping, if set, is one round trip to the node's storage, which
	// StorageFailed uses to tell a failure the database caused.
	Ping              func(context.Context) error
	HeartbeatInterval time.Duration
	StaleAfter        time.Duration
	DownAfter         time.Duration
	Logger            *slog.Logger
}

// Node is this process's membership in the cluster.
type Node struct {
	cfg     Config
	log     *slog.Logger
	started time.Time
	// lastOK is the monotonic time (UnixNano of a time.Now) of the last
	// successful database round trip; 0 before the first.
	lastOK   atomic.Int64
	tableMu  sync.Mutex
	tableSet bool
	// hb is the heartbeat's own connection, held so that a pool saturated
	// by load never delays a heartbeat into a false outage; only Run's
	// goroutine touches it.
	hb *sql.Conn
}

// New returns a node; Run registers and heartbeats.
func New(cfg Config) *Node {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = DefaultDownAfter
	}
	if cfg.Sealed == nil {
		cfg.Sealed = func() bool { return false }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, log: log, started: time.Now()}
	// Healthy until proven otherwise: Open already reached the database.
	n.lastOK.Store(time.Now().UnixNano())
	return n
}

// Shared reports whether the node shares a PostgreSQL database with others.
func (n *Node) Shared() bool { return n.cfg.DB != nil }

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.Self.ID }

// StaleAfter is the liveness bound.
func (n *Node) StaleAfter() time.Duration { return n.cfg.StaleAfter }

// NodeID returns the node id kept in dir/node-id, creating it on first use,
// so a node keeps its id across restarts of one data directory.
func NodeID(dir string) (string, error) {
	p := filepath.Join(dir, "node-id")
	if b, err := os.ReadFile(p); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("cluster: read node id: %w", err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("cluster: node id: %w", err)
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "node"
	}
	id := host + "-" + hex.EncodeToString(b[:])
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("cluster: write node id: %w", err)
	}
	return id, nil
}

// Healthy returns ErrStorageUnavailable when the last successful database
// round trip is older than DownAfter. A single node (SQLite) shares its
// data with no one, so there is no stale view to prevent: it is always
// healthy here (readiness still pings its store).
func (n *Node) Healthy() error {
	if n.cfg.DB == nil {
		return nil
	}
	last := time.Unix(0, n.lastOK.Load())
	if time.Since(last) > n.cfg.DownAfter {
		return ErrStorageUnavailable
	}
	return nil
}

// MarkDown records that a call found the database unreachable, so the
// node refuses further calls at once instead of after DownAfter.
func (n *Node) MarkDown() { n.lastOK.Store(0) }

// StorageFailed decides whether a call that failed with an unexplained
// error failed because storage did not answer: it pings storage (for at
// most a second, even when the call's context is done) and, when that
// fails, marks the node down and reports true. Without Ping it reports
// false.
func (n *Node) StorageFailed(ctx context.Context) bool {
	if n.cfg.Ping == nil {
		return false
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := n.cfg.Ping(pctx); err != nil {
		n.MarkDown()
		return true
	}
	return false
}

// Gate is the store gate's one decision, for a call on a node that shares
// its database. With callErr nil (before the call) it refuses, with
// ErrStorageUnavailable, while the node is cut off from the database, so
// nothing is answered from memory another node may have changed. With a
// call's error it tells a failure the database caused from the call's own:
// when the error is unexplained (the caller knows what its transport calls
// internal, or unavailable after the handler ran) and storage does not
// answer, it reports ErrStorageLost after the handler ran (the call may have
// taken effect) or ErrStorageUnavailable before (nothing did). Otherwise
// callErr comes back as it is.
func (n *Node) Gate(ctx context.Context, callErr error, unexplained, ran bool) error {
	if callErr == nil {
		return n.Healthy()
	}
	if !unexplained || !n.StorageFailed(ctx) {
		return callErr
	}
	if !ran {
		return ErrStorageUnavailable
	}
	n.log.WarnContext(ctx, "call failed while storage is unreachable", "err", callErr)
	return ErrStorageLost
}

const membersTable = `CREATE TABLE IF NOT EXISTS sigil_cluster_members (
	id TEXT PRIMARY KEY,
	grpc_addr TEXT NOT NULL,
	https_addr TEXT NOT NULL,
	public_url TEXT NOT NULL,
	version TEXT NOT NULL,
	sealed BOOLEAN NOT NULL,
	started_at TIMESTAMPTZ NOT NULL,
	last_heartbeat TIMESTAMPTZ NOT NULL
)`

// ensureTable creates the members table once per process. It lives outside
// storage's numbered migrations so it cannot collide with theirs; a
// transaction-scoped advisory lock keeps concurrent starts from racing on
// the catalog.
func (n *Node) ensureTable(ctx context.Context) error {
	n.tableMu.Lock()
	defer n.tableMu.Unlock()
	if n.tableSet {
		return nil
	}
	tx, err := n.cfg.DB.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("cluster: members table: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("members-table")); err != nil {
		return fmt.Errorf("cluster: members table lock: %w", err)
	}
	if _, err := tx.ExecContext(ctx, membersTable); err != nil {
		return fmt.Errorf("cluster: members table: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("cluster: members table: %w", err)
	}
	n.tableSet = true
	return nil
}

// Run registers the node and heartbeats until ctx ends. Database errors
// are logged once per outage and retried; they mark the node unhealthy.
func (n *Node) Run(ctx context.Context) error {
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	down := false
	for {
		err := n.beat(ctx)
		switch {
		case err == nil && down:
			n.log.Info("cluster: storage reachable again")
			down = false
		case err != nil && ctx.Err() == nil && !down:
			n.log.Error("cluster: storage unreachable: refusing calls until it answers", "err", err)
			down = true
		}
		select {
		case <-ctx.Done():
			n.leave()
			if n.hb != nil {
				_ = n.hb.Close()
				n.hb = nil
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// beat is one heartbeat, an upsert of this node's row. A success refreshes
// the node's health. A failure other than a timeout (connection refused
// or reset: the database is gone) marks the node down at once and drops
// the pool's idle connections, which are dead; a timeout (a database
// slow under load) only lets DownAfter run out.
func (n *Node) beat(ctx context.Context) error {
	if n.cfg.DB == nil {
		return nil
	}
	bctx, cancel := context.WithTimeout(ctx, max(2*n.cfg.HeartbeatInterval, 2*time.Second))
	defer cancel()
	err := n.upsert(bctx)
	if err != nil {
		if n.hb != nil {
			_ = n.hb.Close()
			n.hb = nil
		}
		if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
			n.MarkDown()
			if n.cfg.DropIdle != nil {
				n.cfg.DropIdle()
			}
		}
		return err
	}
	n.lastOK.Store(time.Now().UnixNano())
	return nil
}

func (n *Node) upsert(ctx context.Context) error {
	if err := n.ensureTable(ctx); err != nil {
		return err
	}
	if n.hb == nil {
		c, err := n.cfg.DB.Conn(ctx)
		if err != nil {
			return fmt.Errorf("cluster: heartbeat connection: %w", err)
		}
		n.hb = c
	}
	s := n.cfg.Self
	_, err := n.hb.ExecContext(ctx, `INSERT INTO sigil_cluster_members
		(id, grpc_addr, https_addr, public_url, version, sealed, started_at, last_heartbeat)
		VALUES ($1, $2, $3, $4, $5, $6, $7, now())
		ON CONFLICT (id) DO UPDATE SET grpc_addr = EXCLUDED.grpc_addr, https_addr = EXCLUDED.https_addr,
			public_url = EXCLUDED.public_url, version = EXCLUDED.version, sealed = EXCLUDED.sealed,
			started_at = EXCLUDED.started_at, last_heartbeat = now()`,
		s.ID, s.GRPCAddr, s.HTTPSAddr, s.PublicURL, s.Version, n.cfg.Sealed(), n.started.UTC())
	if err != nil {
		return fmt.Errorf("cluster: heartbeat: %w", err)
	}
	return nil
}

// leave marks this node's heartbeat as old on a clean stop, so peers see it
// gone at once rather than after StaleAfter. The row stays (operators see
// which nodes were members).
func (n *Node) leave() {
	if n.cfg.DB == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = n.cfg.DB.ExecContext(ctx, `UPDATE sigil_cluster_members SET last_heartbeat = now() - $2::interval WHERE id = $1`,
		n.cfg.Self.ID, fmt.Sprintf("%d seconds", int(n.cfg.StaleAfter.Seconds())+1))
}

// Members lists the registered nodes, oldest first; on a single node, this
// node alone.
func (n *Node) Members(ctx context.Context) ([]Member, error) {
	if n.cfg.DB == nil {
		m := n.cfg.Self
		m.Sealed, m.StartedAt = n.cfg.Sealed(), n.started
		m.LastHeartbeat = time.Unix(0, n.lastOK.Load())
		return []Member{m}, nil
	}
	if err := n.ensureTable(ctx); err != nil {
		return nil, err
	}
	rows, err := n.cfg.DB.QueryContext(ctx, `SELECT id, grpc_addr, https_addr, public_url, version, sealed, started_at, last_heartbeat,
		last_heartbeat < now() - $1::interval
		FROM sigil_cluster_members ORDER BY started_at, id`, fmt.Sprintf("%d milliseconds", n.cfg.StaleAfter.Milliseconds()))
	if err != nil {
		return nil, fmt.Errorf("cluster: members: %w", err)
	}
	defer rows.Close()
	var out []Member
	for rows.Next() {
		var m Member
		if err := rows.Scan(&m.ID, &m.GRPCAddr, &m.HTTPSAddr, &m.PublicURL, &m.Version, &m.Sealed, &m.StartedAt, &m.LastHeartbeat, &m.Stale); err != nil {
			return nil, fmt.Errorf("cluster: members: %w", err)
		}
		if m.ID == n.cfg.Self.ID {
			// This node's own state is known now, not a heartbeat ago.
			m.Sealed = n.cfg.Sealed()
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cluster: members: %w", err)
	}
	return out, nil
}

// lockKey maps a singleton's name to a 64-bit advisory lock key. The
// namespace prefix keeps Sigil's keys apart from goose's migration lock.
func lockKey(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("sigil/cluster/" + name))
	return int64(h.Sum64())
}

// Singleton runs fn on exactly one node of the cluster at a time until ctx
// ends: the node holding PostgreSQL session advisory lock name runs it; the
// others try again every HeartbeatInterval. The lock dies with its
// session, so when the holder is killed a peer takes over within a few
// seconds (an interval to try, a grace period to start: see holdOnce);
// when the holder loses its session, fn's context is cancelled within the
// grace period, so two nodes never run fn at once. On a single node fn
// simply runs.
func (n *Node) Singleton(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	if n.cfg.DB == nil {
		return fn(ctx)
	}
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		if err := n.holdOnce(ctx, name, fn); err != nil && ctx.Err() == nil {
			n.log.Warn("cluster: singleton", "name", name, "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// holdOnce takes the lock if free and runs fn while the lock's session
// answers. It returns nil when the lock is held elsewhere.
func (n *Node) holdOnce(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	key := lockKey(name)
	conn, err := n.cfg.DB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// Closing returns the connection to the pool; a broken one is dropped.
	defer conn.Close()
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		return fmt.Errorf("try lock: %w", err)
	}
	if !got {
		return nil
	}
	// A previous holder whose session died without its process (a
	// network cut, the server ending the session) runs fn until its next
	// session check fails, at most one interval plus one ping timeout
	// away: wait that long before starting, so two nodes never run it at
	// once. A killed holder's successor just starts that much later.
	grace := n.cfg.HeartbeatInterval + n.pingTimeout() + 100*time.Millisecond
	select {
	case <-ctx.Done():
		n.unlock(conn, key)
		return nil
	case <-time.After(grace):
	}
	n.log.Info("cluster: running singleton on this node", "name", name)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn(fctx) }()
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			n.unlock(conn, key)
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		case <-t.C:
			pctx, pcancel := context.WithTimeout(ctx, n.pingTimeout())
			err := conn.PingContext(pctx)
			pcancel()
			if err != nil {
				// The session (and so the lock) may be gone: stop at once.
				cancel()
				<-done
				n.log.Warn("cluster: lost the singleton's session; another node may take over", "name", name, "err", err)
				return nil
			}
		}
	}
}

// pingTimeout bounds the singleton holder's check of its session.
func (n *Node) pingTimeout() time.Duration { return max(n.cfg.HeartbeatInterval, time.Second) }

// unlock releases the lock on a clean stop, so a peer takes over at once.
func (n *Node) unlock(conn *sql.Conn, key int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, key)
}
