package bench

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestNodeOf(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		workers, conns, nodes int
		want                  []int // workers per node
	}{
		{"16 clients on 1 node", 16, 16, 1, []int{16}},
		{"16 clients on 2 nodes", 16, 16, 2, []int{8, 8}},
		{"16 clients on 3 nodes", 16, 16, 3, []int{6, 5, 5}},
		{"4 shared connections on 3 nodes", 16, 4, 3, []int{8, 4, 4}},
		{"more connections than clients", 4, 16, 3, []int{2, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make([]int, tc.nodes)
			for w := range tc.workers {
				got[NodeOf(w, tc.workers, tc.conns, tc.nodes)]++
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("workers per node %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// TestDialPoolSpreadsAddresses: with several addresses, connection i goes
// to address i mod n, which is what NodeOf assumes.
func TestDialPoolSpreadsAddresses(t *testing.T) {
	addrs := []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
	for _, tc := range []struct {
		name  string
		addr  string
		conns int
	}{
		{"one address", addrs[0], 4},
		{"three addresses", strings.Join(addrs, ","), 7},
		{"spaces after commas", strings.Join(addrs, ", "), 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool, err := dialPool(SigilConn{Addr: tc.addr}, 16, tc.conns)
			if err != nil {
				t.Fatal(err)
			}
			defer closeAll(pool)
			list := strings.Split(tc.addr, ",")
			if len(pool) != tc.conns {
				t.Fatalf("%d connections, want %d", len(pool), tc.conns)
			}
			for i, cc := range pool {
				want := strings.TrimSpace(list[i%len(list)])
				if cc.Target() != want {
					t.Fatalf("connection %d dials %q, want %q", i, cc.Target(), want)
				}
				if n := NodeOf(i, 16, tc.conns, len(list)); strings.TrimSpace(list[n]) != want {
					t.Fatalf("NodeOf(%d) = %d, but the worker's connection dials %q", i, n, want)
				}
			}
		})
	}
}

// oddFails succeeds for even workers and fails for odd ones.
type oddFails struct{}

func (oddFails) Name() string   { return "odd" }
func (oddFails) Target() string { return "none" }
func (oddFails) Close() error   { return nil }
func (oddFails) Do(_ context.Context, w int) error {
	time.Sleep(time.Millisecond)
	if w%2 == 1 {
		return errors.New("odd worker")
	}
	return nil
}

func TestPerWorkerCountsSuccessesOnly(t *testing.T) {
	pw := CountPerWorker(oddFails{}, 4)
	res, err := Run(context.Background(), pw, Options{Concurrency: 4, Count: 40})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for w := range 4 {
		if w%2 == 1 && pw.OK(w) != 0 {
			t.Fatalf("failing worker %d counted %d", w, pw.OK(w))
		}
		sum += pw.OK(w)
	}
	if sum != int64(res.OK) || sum == 0 {
		t.Fatalf("per-worker sum %d, run OK %d", sum, res.OK)
	}
	pw.Reset()
	if pw.OK(0) != 0 {
		t.Fatal("Reset kept counts")
	}
}

// TestCredsRunCountsOnlyItsOwnRoles replays the problem of several
// harness processes on one PostgreSQL: another run's roles (and any other
// sigil_ role) must not be counted as this run's leftovers, while this
// run's own roles are.
func TestCredsRunCountsOnlyItsOwnRoles(t *testing.T) {
	ctx := context.Background()
	pg, err := StartPostgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	dsn := pg.DSN("postgres")
	a, b := NewCredsRun("bench-db", "bench"), NewCredsRun("bench-db", "bench")
	if a.Tag == b.Tag || a.Role() == b.Role() || a.LeasePrefix() == b.LeasePrefix() || a.UserPrefix() == b.UserPrefix() {
		t.Fatalf("two runs share names: %+v %+v", a, b)
	}
	if !strings.HasPrefix(a.LeasePrefix(), "bench-db/"+a.Role()+"/") {
		t.Fatalf("lease prefix %q", a.LeasePrefix())
	}
	setup := PostgresEngineSetup(a, dsn, 4, 0)
	if setup.Role != a.Role() || setup.RoleFields["username_template"] != a.UserPrefix()+"{{random}}" {
		t.Fatalf("engine setup %+v does not carry the run's names", setup)
	}
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// Two of a's roles, three of b's, one of some other sigil user.
	for _, name := range []string{a.UserPrefix() + "x1", a.UserPrefix() + "x2",
		b.UserPrefix() + "y1", b.UserPrefix() + "y2", b.UserPrefix() + "y3", "sigil_app_zzz"} {
		if _, err := c.Exec(ctx, "CREATE ROLE "+pgx.Identifier{name}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		run  CredsRun
		want int
	}{{a, 2}, {b, 3}} {
		n, err := CountRoles(ctx, dsn, tc.run.UserPrefix())
		if err != nil || n != tc.want {
			t.Fatalf("run %s counts %d roles (%v), want %d", tc.run.Tag, n, err, tc.want)
		}
	}
}
