package cluster_test

import (
	"context"
	"database/sql"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/sigil-ca/sigil/cluster"
	"github.com/sigil-ca/sigil/internal/testharness"
)

func TestMain(m *testing.M) { testharness.Main(m) }

// node is a cluster node on its own connection pool, as a separate
// process would have.
func node(t *testing.T, dsn, id string) (*cluster.Node, *sql.DB) {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	n := cluster.New(cluster.Config{DB: db, Self: cluster.Member{ID: id, GRPCAddr: id + ":8444", Version: "test"},
		HeartbeatInterval: 100 * time.Millisecond, StaleAfter: time.Second, DownAfter: 500 * time.Millisecond})
	return n, db
}

func run(t *testing.T, f func(ctx context.Context) error) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMembers: nodes register and heartbeat; one that stops beating is
// listed stale after StaleAfter, the others stay alive.
func TestMembers(t *testing.T) {
	dsn := testharness.StartPostgres(t)
	a, _ := node(t, dsn, "a")
	b, _ := node(t, dsn, "b")
	run(t, a.Run)
	stopB := run(t, b.Run)
	waitFor(t, 5*time.Second, "two members", func() bool {
		ms, err := a.Members(context.Background())
		return err == nil && len(ms) == 2
	})
	stopB()
	waitFor(t, 5*time.Second, "b stale, a alive", func() bool {
		ms, err := a.Members(context.Background())
		if err != nil || len(ms) != 2 {
			return false
		}
		stale := map[string]bool{}
		for _, m := range ms {
			stale[m.ID] = m.Stale
		}
		return stale["b"] && !stale["a"]
	})
}

// TestSingletonOnce: of three nodes running the same singleton, exactly
// one runs it at any time; when the holder's database session dies (as
// when its process is killed), another takes over within about a
// heartbeat, and never two at once.
func TestSingletonOnce(t *testing.T) {
	dsn := testharness.StartPostgres(t)
	var running, maxRunning, starts atomic.Int32
	holders := make(chan string, 16)
	work := func(id string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				m := maxRunning.Load()
				if n <= m || maxRunning.CompareAndSwap(m, n) {
					break
				}
			}
			starts.Add(1)
			holders <- id
			<-ctx.Done()
			return ctx.Err()
		}
	}
	dbs := map[string]*sql.DB{}
	for _, id := range []string{"a", "b", "c"} {
		n, db := node(t, dsn, id)
		dbs[id] = db
		run(t, func(ctx context.Context) error { return n.Singleton(ctx, "crl", work(id)) })
	}
	var first string
	select {
	case first = <-holders:
	case <-time.After(5 * time.Second):
		t.Fatal("no node ran the singleton")
	}
	time.Sleep(500 * time.Millisecond)
	if s := starts.Load(); s != 1 {
		t.Fatalf("%d starts while the first holder lives, want 1", s)
	}
	// Kill the holder's session from the server side.
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(`SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var second string
	select {
	case second = <-holders:
	case <-time.After(5 * time.Second):
		t.Fatal("no node took the singleton over")
	}
	t.Logf("%s took over from %s after %v", second, first, time.Since(start).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	if m := maxRunning.Load(); m != 1 {
		t.Fatalf("%d nodes ran the singleton at once", m)
	}
}

// TestHealthy: a node whose database refuses connections is unhealthy
// at its first heartbeat; a single node (no shared database) always is
// healthy, having no peer whose writes it could miss.
func TestHealthy(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://nobody:x@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := cluster.New(cluster.Config{DB: db, Self: cluster.Member{ID: "x"}, HeartbeatInterval: 50 * time.Millisecond, DownAfter: time.Minute})
	if err := n.Healthy(); err != nil {
		t.Fatalf("before the first heartbeat: %v", err)
	}
	run(t, n.Run)
	waitFor(t, 5*time.Second, "unhealthy without its database", func() bool { return errors.Is(n.Healthy(), cluster.ErrStorageUnavailable) })

	single := cluster.New(cluster.Config{DownAfter: time.Nanosecond})
	run(t, single.Run)
	time.Sleep(10 * time.Millisecond)
	if err := single.Healthy(); err != nil {
		t.Fatalf("single node: %v", err)
	}
	ms, err := single.Members(context.Background())
	if err != nil || len(ms) != 1 {
		t.Fatalf("single node members = %v, %v", ms, err)
	}
}

// TestStorageFailed: a failed call is storage's only when a ping fails;
// without a ping nothing is blamed on storage.
func TestStorageFailed(t *testing.T) {
	down := errors.New("connection refused")
	tests := []struct {
		name string
		ping func(context.Context) error
		want bool
	}{
		{"no ping", nil, false},
		{"ping answers", func(context.Context) error { return nil }, false},
		{"ping fails", func(context.Context) error { return down }, true},
		{"ping sees a live context", func(ctx context.Context) error { return ctx.Err() }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := cluster.New(cluster.Config{Ping: tt.ping})
			// The call's own context has ended: the ping must not inherit that.
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			if got := n.StorageFailed(ctx); got != tt.want {
				t.Fatalf("StorageFailed = %v, want %v", got, tt.want)
			}
		})
	}
}
