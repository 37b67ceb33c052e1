package bench

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-ca/sigil/internal/pgcluster"
)

// Postgres is a running throwaway PostgreSQL server, the same one the test
// harness starts (internal/pgcluster): durability off, loopback only,
// stopped and removed by Stop or, if the bench dies, by a watchdog.
type Postgres struct {
	*pgcluster.Cluster
}

// StartPostgres initialises and starts a throwaway server. Sigil and the
// raw ceiling run against the same settings.
func StartPostgres(ctx context.Context) (*Postgres, error) {
	c, err := pgcluster.Start(ctx, pgcluster.Options{Prefix: "sigil-bench-pg-"})
	if err != nil {
		return nil, err
	}
	return &Postgres{c}, nil
}

// Version asks the server for its version string.
func (p *Postgres) Version(ctx context.Context) (string, error) {
	c, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("postgres: %w", err)
	}
	defer c.Close(ctx)
	var v string
	if err := c.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return "", fmt.Errorf("postgres: %w", err)
	}
	return v, nil
}

// StartStoragePostgres starts a throwaway PostgreSQL for the server's own
// storage and returns it with the URL of a database made for it. Unlike
// the creds target it keeps PostgreSQL's default durability (fsync,
// synchronous commit, full-page writes), as a production store would, so
// its figures compare with the embedded store's (which syncs its WAL).
func StartStoragePostgres(ctx context.Context) (*Postgres, string, error) {
	c, err := pgcluster.Start(ctx, pgcluster.Options{Prefix: "sigil-bench-store-",
		Settings: []string{"fsync=on", "synchronous_commit=on", "full_page_writes=on"}})
	if err != nil {
		return nil, "", err
	}
	if err := createDatabase(ctx, c.DSN("postgres"), "sigil"); err != nil {
		c.Stop()
		return nil, "", err
	}
	return &Postgres{c}, c.DSN("sigil"), nil
}
