// Package testharness starts real components for tests: PostgreSQL, SoftHSM2
// tokens and Sigil itself.
package testharness

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/sigil-ca/sigil/internal/pgcluster"
)

// The cluster is shared by every test in one test binary: starting one costs
// about 1.5 s, a fresh database in it a few tens of milliseconds. This is
// test-only package state.
var (
	pgOnce    sync.Once
	pgShared  *pgCluster
	pgErr     error
	pgStopped bool
	pgMu      sync.Mutex // guards pgStopped and stop
)

// pgCluster is the shared throwaway server and an admin connection to it.
type pgCluster struct {
	*pgcluster.Cluster
	admin    *sql.DB
	createMu sync.Mutex // serialises CREATE DATABASE (they share template1)
}

// Main runs the tests of a package that uses StartPostgres and then stops
// the shared cluster and removes its files. Call it from TestMain:
//
//	func TestMain(m *testing.M) { testharness.Main(m) }
//
// Without it the cluster is still stopped: a watchdog process started with
// the cluster stops it and removes its directory within a second or so of
// the test binary exiting, however it exits (including a -timeout panic or
// a kill). Main only makes that prompt and deterministic.
func Main(m *testing.M) {
	code := m.Run()
	stopSharedPostgres()
	os.Exit(code)
}

// StartPostgres returns the admin DSN
// (postgres://postgres:PW@127.0.0.1:PORT/DB?sslmode=disable) of a database
// created for this test in the test binary's throwaway cluster, which it
// starts on first use. The database is dropped when the test ends. The test
// fails if the PostgreSQL server binaries are not installed.
func StartPostgres(t testing.TB) string {
	t.Helper()
	pgOnce.Do(func() { pgShared, pgErr = startCluster() })
	if pgErr != nil {
		t.Fatal(pgErr)
	}
	c := pgShared
	name := "t_" + randomHex(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.createMu.Lock()
	_, err := c.admin.ExecContext(ctx, "CREATE DATABASE "+name)
	c.createMu.Unlock()
	if err != nil {
		t.Fatalf("postgres: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// FORCE ends connections a test left open instead of failing.
		if _, err := c.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("postgres: drop database %s: %v", name, err)
		}
	})
	return c.DSN(name)
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}

// startCluster starts the shared cluster and connects to it. PostgreSQL
// tests fail rather than skip when the server binaries are missing, so a
// missing dependency is never mistaken for a pass.
func startCluster() (_ *pgCluster, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pc, err := pgcluster.Start(ctx, pgcluster.Options{Prefix: "sigil-pg-", Settings: []string{"shared_buffers=16MB"}})
	if err != nil {
		return nil, err
	}
	c := &pgCluster{Cluster: pc}
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	if c.admin, err = sql.Open("pgx", c.DSN("postgres")); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	c.admin.SetMaxOpenConns(4)
	if err := c.admin.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("postgres: connect (log %s): %w\n--- log tail ---\n%s", c.LogPath(), err, c.LogTail(30))
	}
	return c, nil
}

// stop closes the admin connection and stops the cluster.
func (c *pgCluster) stop() {
	if c.admin != nil {
		_ = c.admin.Close()
	}
	c.Stop()
}

func stopSharedPostgres() {
	pgMu.Lock()
	defer pgMu.Unlock()
	if pgStopped || pgShared == nil {
		return
	}
	pgStopped = true
	pgShared.stop()
}

// PostgresLeastPrivilegeAdmin creates a login role with CREATEROLE and no
// other attribute (not a superuser), as real deployments run a credential
// engine's admin, allowed to connect to dsn's database and to create in its
// public schema (which PostgreSQL 15 no longer grants to everyone). It
// returns dsn with that role's credentials. dsn must be a superuser DSN
// from StartPostgres. The role, and whatever it owns in the database, is
// dropped when the test ends (before the database is).
func PostgresLeastPrivilegeAdmin(t testing.TB, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("postgres: parse DSN: %v", err)
	}
	name := "lpadmin_" + randomHex(t, 6)
	pw := randomHex(t, 24)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dbName := strings.TrimPrefix(u.Path, "/")
	for _, q := range []string{
		// The name and password are hex: nothing to quote.
		"CREATE ROLE " + name + " LOGIN CREATEROLE PASSWORD '" + pw + "'",
		"GRANT CONNECT, CREATE ON DATABASE " + dbName + " TO " + name,
		"GRANT CREATE ON SCHEMA public TO " + name,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("postgres: create least-privilege admin: %v", err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Errorf("postgres: %v", err)
			return
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "DROP OWNED BY "+name); err != nil {
			t.Errorf("postgres: drop what %s owns: %v", name, err)
		}
		if _, err := db.ExecContext(ctx, "DROP ROLE IF EXISTS "+name); err != nil {
			t.Errorf("postgres: drop role %s: %v", name, err)
		}
	})
	u.User = url.UserPassword(name, pw)
	return u.String()
}
