package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/envelope"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// Issue 21: a client that gives up mid-mint must not leave a credential
// behind. 16 clients call Creds over gRPC and cancel at random points,
// many after the server has started creating the role; a few calls run to
// completion. Once the mint timeout's window has passed, every sigil_
// role of the test's engine role has an active lease, and a revoke by
// prefix leaves none. The same holds when the server is killed with
// SIGKILL during a round and restarted: its expiry worker cleans up. On
// d7424be each cut-short round left roles without any lease.
func TestAttackLeasesCancelledCredsLeaveNoOrphans(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill bool
	}{
		{"cancel", false},
		{"cancel and kill -9", true},
	} {
		t.Run(tc.name, func(t *testing.T) { leasesCancelRounds(t, tc.kill) })
	}
}

const (
	leasesClients   = 16
	leasesRounds    = 3
	leasesRoundTime = 3 * time.Second
	leasesMount     = "lc"
	leasesRole      = "leasecancel"
	// leasesRolePrefix is what the role's usernames start with (the
	// default template sigil_{{role}}_{{random}}): roles are cluster-wide,
	// and other tests mint sigil_ roles of their own.
	leasesRolePrefix = "sigil_" + leasesRole + "_"
)

func leasesCancelRounds(t *testing.T, kill bool) {
	pg := newPGTarget(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	// A short mint timeout: a lease whose mint did not complete is due 4 s
	// after issue instead of 40 s.
	cfg := leaseConfig(t, "  mint_timeout: 2s\n  poll_interval: 200ms\n")
	d := startDev(t, dataDir, "--config", cfg)
	for _, s := range [][]string{
		{"engine", "enable", "postgres", "--mount", leasesMount},
		{"engine", "configure", leasesMount, "connection_url=" + pg.dsn, "max_open_connections=4", "scram_iterations=16"},
		{"role", "write", leasesMount + "/" + leasesRole, "default_ttl=1h", "max_ttl=2h"},
	} {
		if _, stderr, code := d.cli(t, s...); code != 0 {
			t.Fatalf("%v: code %d: %s", s, code, stderr)
		}
	}
	_, r, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	rcpt := &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}

	var (
		cancelled, completed, failed atomic.Int64
		kept                         sync.Map // lease ids a client received and kept
	)
	for round := 1; round <= leasesRounds; round++ {
		conn := leasesDial(t, d)
		eng, ls := sigilv1.NewEngineServiceClient(conn), sigilv1.NewLeaseServiceClient(conn)
		stop := time.Now().Add(leasesRoundTime)
		// The clients keep the server they started with: d is replaced
		// below when it is killed (the root token stays the same).
		cur := d
		var wg sync.WaitGroup
		for range leasesClients {
			wg.Go(func() {
				for time.Now().Before(stop) {
					base, cancel := context.WithCancel(leasesAuth(context.Background(), cur))
					// Mostly cut short at a random point of the call (a mint
					// takes a few ms here); one call in eight completes.
					var timer *time.Timer
					if rand.IntN(8) != 0 {
						timer = time.AfterFunc(time.Duration(rand.IntN(25000))*time.Microsecond, cancel)
					}
					resp, err := eng.Creds(base, &sigilv1.CredsRequest{Mount: leasesMount, Role: leasesRole, Recipient: rcpt})
					if timer != nil {
						timer.Stop()
					}
					cut := base.Err() != nil
					cancel()
					switch {
					case err == nil && rand.IntN(2) == 0:
						completed.Add(1)
						kept.Store(resp.GetLeaseId(), true)
					case err == nil:
						completed.Add(1)
						rctx, rc := context.WithTimeout(leasesAuth(context.Background(), cur), 10*time.Second)
						// A revoke that fails (the server killed under it)
						// may be done or handed to the worker: either way
						// the count check below covers it.
						_, _ = ls.Revoke(rctx, &sigilv1.RevokeLeaseRequest{Id: resp.GetLeaseId()})
						rc()
					case cut:
						cancelled.Add(1)
					default:
						failed.Add(1) // the server died under it
						time.Sleep(20 * time.Millisecond)
					}
				}
			})
		}
		if kill && round == 2 {
			time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
			d.kill(t)
			d = startDev(t, dataDir, "--config", cfg)
		}
		wg.Wait()
		conn.Close()
	}
	t.Logf("%d rounds × %d clients: %d calls cancelled, %d completed, %d failed", leasesRounds, leasesClients,
		cancelled.Load(), completed.Load(), failed.Load())
	if cancelled.Load() < leasesClients || completed.Load() == 0 {
		t.Fatalf("the rounds did not exercise both cancelled and completed mints")
	}

	conn := leasesDial(t, d)
	ls := sigilv1.NewLeaseServiceClient(conn)
	// Once the mint timeout's window (2×2 s) has passed, no mint is in
	// flight (the server finishes those its clients gave up on, then
	// revokes them) and no lease may still be pending: each is active or
	// revoked.
	time.Sleep(4 * time.Second)
	var open []*sigilv1.LeaseInfo
	start := time.Now()
	waitFor(t, 30*time.Second, "no lease pending", func() bool {
		open = leasesListOpen(t, d, ls)
		for _, l := range open {
			if l.GetState() != "active" {
				return false
			}
		}
		return true
	})
	t.Logf("pending leases resolved %.1fs after the mint window", time.Since(start).Seconds())
	roles := leasesRoles(t, pg)
	if len(roles) != len(open) {
		t.Errorf("%d %s* roles in PostgreSQL but %d active leases (roles without a lease are orphans, leases without a role claim more than exists)", len(roles), leasesRolePrefix, len(open))
	}
	missing := 0
	kept.Range(func(id, _ any) bool {
		if !slices.ContainsFunc(open, func(l *sigilv1.LeaseInfo) bool { return l.GetId() == id }) {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Errorf("%d leases a client received and kept are not active", missing)
	}
	t.Logf("%d active leases, %d roles", len(open), len(roles))
	if os.Getenv("LEASES_DEBUG") != "" {
		for _, l := range open {
			if l.GetAttempts() > 0 || l.GetLastError() != "" || l.GetExpiresAtUnix()-l.GetIssuedAtUnix() < 600 {
				t.Logf("lease %s attempts %d last_error %q ttl %d", l.GetId(), l.GetAttempts(), l.GetLastError(), l.GetExpiresAtUnix()-l.GetIssuedAtUnix())
			}
		}
		t.Logf("server stderr:\n%s", d.stderr.String())
	}

	out := revokePrefix(t, d, leasesMount+"/")
	t.Logf("revoke --prefix %s/: %s", leasesMount, out)
	if left := leasesRoles(t, pg); len(left) != 0 {
		t.Errorf("%d roles remain after the revoke by prefix: %v", len(left), left)
	}
	if left := leasesListOpen(t, d, ls); len(left) != 0 {
		t.Errorf("%d open leases remain after the revoke by prefix", len(left))
	}
}

// leasesDial connects to d's gRPC listener, trusting its CA.
func leasesDial(t *testing.T, d *devServer) *grpc.ClientConn {
	t.Helper()
	rootPEM, err := os.ReadFile(d.caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(d.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// leasesAuth adds d's root token to ctx.
func leasesAuth(ctx context.Context, d *devServer) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+d.exports["SIGIL_TOKEN"])
}

// leasesListOpen lists the open leases under the test's mount.
func leasesListOpen(t *testing.T, d *devServer, ls sigilv1.LeaseServiceClient) []*sigilv1.LeaseInfo {
	t.Helper()
	var out []*sigilv1.LeaseInfo
	page := ""
	for {
		ctx, cancel := context.WithTimeout(leasesAuth(context.Background(), d), 10*time.Second)
		resp, err := ls.List(ctx, &sigilv1.ListLeasesRequest{Prefix: leasesMount + "/", PageToken: page, PageSize: 1000})
		cancel()
		if err != nil {
			t.Fatalf("list leases: %v", err)
		}
		out = append(out, resp.GetLeases()...)
		if page = resp.GetNextPageToken(); page == "" {
			return out
		}
	}
}

// leasesRoles returns the roles of the test's engine role.
func leasesRoles(t *testing.T, pg *pgTarget) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := pg.admin.QueryContext(ctx, `SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1`, leasesRolePrefix)
	if err != nil {
		t.Fatalf("query pg_roles: %v", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// A mint the database refuses for good (a creation statement naming a
// table that does not exist) is FailedPrecondition, not Unavailable (which
// tells clients to retry), and its lease is not listed as active.
func TestAttackLeasesRejectedMintIsHonest(t *testing.T) {
	pg := newPGTarget(t)
	d := startDev(t, filepath.Join(t.TempDir(), "data"))
	stmts := filepath.Join(t.TempDir(), "creation.sql")
	if err := os.WriteFile(stmts, []byte("CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\nGRANT SELECT ON no_such_table TO {{name}};\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range [][]string{
		{"engine", "enable", "postgres", "--mount", leasesMount},
		{"engine", "configure", leasesMount, "connection_url=" + pg.dsn, "scram_iterations=16"},
		{"role", "write", leasesMount + "/bad", "creation_statements=@" + stmts},
	} {
		if _, stderr, code := d.cli(t, s...); code != 0 {
			t.Fatalf("%v: code %d: %s", s, code, stderr)
		}
	}
	_, r, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	conn := leasesDial(t, d)
	ctx, cancel := context.WithTimeout(leasesAuth(context.Background(), d), 30*time.Second)
	defer cancel()
	_, err = sigilv1.NewEngineServiceClient(conn).Creds(ctx, &sigilv1.CredsRequest{Mount: leasesMount, Role: "bad",
		Recipient: &sigilv1.Recipient{Kem: uint32(r.KEM), PublicKey: r.PublicKey}})
	if got := status.Code(err); got != codes.FailedPrecondition {
		t.Errorf("mint refused by the database: code %v (%v), want FailedPrecondition", got, err)
	}
	for _, l := range leasesListOpen(t, d, sigilv1.NewLeaseServiceClient(conn)) {
		t.Errorf("failed mint listed as %s: %s (%s)", l.GetState(), l.GetId(), l.GetLastError())
	}
}
