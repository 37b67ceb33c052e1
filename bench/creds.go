package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// CredsRun names what one creds-postgres run owns, so several harness
// processes (one per node, or runs side by side) on one PostgreSQL and one
// mount never count or revoke each other's credentials: the Sigil role is
// Base-Tag (so its leases live under mount/Base-Tag/) and its username
// template makes every database role start with sigil_Tag_.
type CredsRun struct {
	Mount, Base, Tag string
}

// NewCredsRun picks a fresh random tag for a run on mount with role base.
func NewCredsRun(mount, base string) CredsRun {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return CredsRun{Mount: mount, Base: base, Tag: hex.EncodeToString(b[:])}
}

// Role is the Sigil role this run writes and mints from.
func (r CredsRun) Role() string { return r.Base + "-" + r.Tag }

// LeasePrefix is the prefix of every lease this run's role issues.
func (r CredsRun) LeasePrefix() string { return r.Mount + "/" + r.Role() + "/" }

// UserPrefix is the prefix of every database role this run creates.
func (r CredsRun) UserPrefix() string { return "sigil_" + r.Tag + "_" }

// PostgresEngineSetup is the postgres engine mount the creds-postgres
// scenario configures: default statements (the thorough default
// revocation included), max_open_connections = the clients of the run,
// and the run's role with its own username template.
func PostgresEngineSetup(run CredsRun, dsn string, conns, scramIterations int) EngineSetup {
	cfg := map[string]string{"connection_url": dsn, "max_open_connections": strconv.Itoa(max(conns, 1))}
	if scramIterations > 0 {
		cfg["scram_iterations"] = strconv.Itoa(scramIterations)
	}
	return EngineSetup{Type: "postgres", Mount: run.Mount, Config: cfg, Role: run.Role(),
		RoleFields: map[string]string{"username_template": run.UserPrefix() + "{{random}}"}}
}

// CredsMintRevoke is the creds-postgres scenario (and works for any
// engine): each operation mints a credential through EngineService.Creds,
// opens its envelope and checks it holds a username and password, then
// revokes the lease through LeaseService.Revoke. One operation is one
// create+revoke pair, as the raw ceiling's CREATE ROLE + DROP ROLE is.
type CredsMintRevoke struct {
	name        string
	mount, role string
	conns       []*grpc.ClientConn
	engs        []sigilv1.EngineServiceClient
	leases      []sigilv1.LeaseServiceClient
	keys        []recipientKey
	// CheckFields must all be non-empty in each secret.
	checkFields []string
}

// NewCredsMintRevoke dials min(conns, workers) connections.
func NewCredsMintRevoke(c SigilConn, name, mount, role string, checkFields []string, workers, conns int) (*CredsMintRevoke, error) {
	keys, err := newRecipientKeys(workers)
	if err != nil {
		return nil, err
	}
	s := &CredsMintRevoke{name: name, mount: mount, role: role, keys: keys, checkFields: checkFields}
	if s.conns, err = dialPool(c, workers, conns); err != nil {
		return nil, err
	}
	for _, cc := range s.conns {
		s.engs = append(s.engs, sigilv1.NewEngineServiceClient(cc))
		s.leases = append(s.leases, sigilv1.NewLeaseServiceClient(cc))
	}
	return s, nil
}

func (s *CredsMintRevoke) Name() string   { return s.name }
func (s *CredsMintRevoke) Target() string { return "sigil" }

func (s *CredsMintRevoke) Do(ctx context.Context, worker int) error {
	k := s.keys[worker]
	i := worker % len(s.conns)
	resp, err := s.engs[i].Creds(ctx, &sigilv1.CredsRequest{Mount: s.mount, Role: s.role, Recipient: k.pub})
	if err != nil {
		return fmt.Errorf("creds %s/%s: %w", s.mount, s.role, err)
	}
	id := resp.GetLeaseId()
	data, err := openData(k.priv, resp.GetEnvelope(), id)
	if err == nil {
		for _, f := range s.checkFields {
			if data[f] == "" {
				err = fmt.Errorf("no %s in the secret", f)
				break
			}
		}
	}
	clear(data)
	// Revoke even when the secret was unusable, so nothing is left behind;
	// the revocation is not cut short by the end of the run.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	_, rerr := s.leases[i].Revoke(rctx, &sigilv1.RevokeLeaseRequest{Id: id})
	cancel()
	if err != nil {
		return fmt.Errorf("creds %s: %w", id, err)
	}
	if rerr != nil {
		return fmt.Errorf("revoke %s: %w", id, rerr)
	}
	return nil
}

func (s *CredsMintRevoke) Close() error {
	return closeAll(s.conns)
}

// PostgresRoleCeiling is the creds-postgres ceiling: raw CREATE ROLE …
// LOGIN PASSWORD … VALID UNTIL … followed by DROP ROLE through pgx, from
// conns connections at once for d, on the database at dsn. The password is
// random and sent in clear, so the server hashes it at its own SCRAM
// iteration count (4096 on PostgreSQL 15, which has no setting for it), as
// it does for a client that creates roles itself. Roles are named
// bench_raw_* and dropped again.
func PostgresRoleCeiling(ctx context.Context, dsn string, conns int, d time.Duration) (Ceiling, error) {
	conns = max(conns, 1)
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: PostgreSQL URL: %w", err)
	}
	pc.MaxConns, pc.MinConns = int32(conns), int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: connect: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: connect: %w", err)
	}
	var seq atomic.Int64
	var tag [6]byte
	_, _ = rand.Read(tag[:])
	prefix := "bench_raw_" + hex.EncodeToString(tag[:]) + "_"
	name := fmt.Sprintf("creds-postgres: raw CREATE ROLE … PASSWORD + DROP ROLE via pgx, %d connections", conns)
	return measureLoop(ctx, name, conns, d, func(int, int64) error {
		role := pgx.Identifier{prefix + strconv.FormatInt(seq.Add(1), 10)}.Sanitize()
		var pw [32]byte
		_, _ = rand.Read(pw[:])
		until := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		// Parameters inside CREATE ROLE need the simple protocol.
		if _, err := pool.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD $1 VALID UNTIL $2", pgx.QueryExecModeSimpleProtocol,
			hex.EncodeToString(pw[:]), until); err != nil {
			return fmt.Errorf("create role: %w", err)
		}
		if _, err := pool.Exec(ctx, "DROP ROLE "+role); err != nil {
			return fmt.Errorf("drop role: %w", err)
		}
		return nil
	})
}

// CountRoles counts the roles whose name starts with prefix (what a
// scenario leaves behind: it must be none).
func CountRoles(ctx context.Context, dsn, prefix string) (int, error) {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("postgres: %w", err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", prefix).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: count roles: %w", err)
	}
	return n, nil
}

// RevokeAndCountRoles revokes every open lease of run (under its lease
// prefix, never another run's), then counts the database roles run
// created (its user prefix), until none remains or wait passes. Leases
// still pending (mints in flight or whose outcome was unknown) are revoked
// by the server's expiry worker when their window ends, so the count is
// retried until then. It returns how many leases it revoked and how many
// of run's roles remain at the end.
func RevokeAndCountRoles(ctx context.Context, cc *grpc.ClientConn, run CredsRun, dsn string, wait time.Duration,
	logf func(string, ...any)) (revoked int64, left int, err error) {
	ls := sigilv1.NewLeaseServiceClient(cc)
	deadline := time.Now().Add(wait)
	prefix := run.LeasePrefix()
	for {
		resp, err := ls.Revoke(ctx, &sigilv1.RevokeLeaseRequest{Prefix: prefix})
		if err != nil {
			return revoked, 0, fmt.Errorf("revoke the leases left under %s: %w", prefix, err)
		}
		revoked += resp.GetRevoked()
		if left, err = CountRoles(ctx, dsn, run.UserPrefix()); err != nil {
			return revoked, 0, err
		}
		pending, err := countOpen(ctx, ls, prefix)
		if err != nil {
			return revoked, left, err
		}
		// Without open leases nothing will change any more.
		if pending == 0 || time.Now().After(deadline) {
			return revoked, left, nil
		}
		logf("%d %s* roles and %d open leases remain under %s; waiting for the server's pending leases", left, run.UserPrefix(), pending, prefix)
		select {
		case <-ctx.Done():
			return revoked, left, nil
		case <-time.After(2 * time.Second):
		}
	}
}

// countOpen counts the open leases (active or pending) under prefix.
func countOpen(ctx context.Context, ls sigilv1.LeaseServiceClient, prefix string) (int, error) {
	n, page := 0, ""
	for {
		resp, err := ls.List(ctx, &sigilv1.ListLeasesRequest{Prefix: prefix, PageToken: page, PageSize: 1000})
		if err != nil {
			return n, fmt.Errorf("list leases under %s: %w", prefix, err)
		}
		n += len(resp.GetLeases())
		if page = resp.GetNextPageToken(); page == "" {
			return n, nil
		}
	}
}
