package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/postgres"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/testharness"
	"github.com/sigil-ca/sigil/lease"
)

// TestLeaseLifecycle wires the pieces the way the server will: a SQLite
// store, the barrier, a registry with the postgres engine, mounts, the
// lease manager and envelopes; then checks mint → sealed delivery → login,
// revoke by id and by prefix, expiry, and that no password reaches disk.
func TestLeaseLifecycle(t *testing.T) {
	ctx := context.Background()
	dsn := testharness.StartPostgres(t)
	dir := t.TempDir()
	st := barriertest.OpenSQLite(t, filepath.Join(dir, "sigil.db"))
	bar := barriertest.Unsealed(t, st)
	reg := engines.NewRegistry()
	if err := postgres.Register(reg); err != nil {
		t.Fatal(err)
	}
	mounts := engines.NewMounts(st, bar, reg, engines.Services{}, nil)
	defer mounts.Close()
	m, err := lease.New(lease.Config{Store: st, Sealer: bar, Engines: mounts, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	m.Start(ctx)
	defer m.Stop()

	if err := mounts.Enable(ctx, "db", postgres.Type); err != nil {
		t.Fatal(err)
	}
	if err := mounts.Configure(ctx, "db", map[string]string{postgres.KeyConnectionURL: dsn, postgres.KeySCRAMIterations: "16"}); err != nil {
		t.Fatal(err)
	}
	if err := mounts.WriteRole(ctx, "db", "readonly", map[string]string{postgres.KeyDefaultTTL: "1h", postgres.KeyMaxTTL: "2h"}); err != nil {
		t.Fatal(err)
	}
	if cfg, _ := mounts.ReadConfig(ctx, "db"); strings.Contains(cfg[postgres.KeyConnectionURL], "secret") ||
		cfg[postgres.KeyConnectionURL] == dsn {
		t.Errorf("config not redacted: %q", cfg[postgres.KeyConnectionURL])
	}

	priv, rcpt, err := envelope.GenerateKey(envelope.KEMX25519HKDFSHA256)
	if err != nil {
		t.Fatal(err)
	}
	var passwords []string
	mintOne := func(ttl time.Duration) (string, map[string]string) {
		t.Helper()
		got, err := m.Mint(ctx, lease.MintRequest{Mount: "db", Role: "readonly", Identity: "tester", TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		// What the server would send: only the envelope.
		env, err := envelope.SealData(rcpt, got.Lease.ID, got.Data)
		if err != nil {
			t.Fatal(err)
		}
		data, err := envelope.OpenData(priv, env, got.Lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		passwords = append(passwords, data["password"])
		return got.Lease.ID, data
	}
	canLogin := func(d map[string]string) bool {
		cfg, _ := pgx.ParseConfig(dsn)
		cfg.User, cfg.Password = d["username"], d["password"]
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return false
		}
		c.Close(ctx)
		return true
	}

	id, data := mintOne(0)
	if !canLogin(data) {
		t.Fatal("minted credential cannot log in")
	}
	if err := m.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if canLogin(data) {
		t.Fatal("login works after revoke")
	}

	var all []map[string]string
	for range 4 {
		_, d := mintOne(0)
		all = append(all, d)
	}
	if n, err := m.RevokePrefix(ctx, "db/readonly/"); err != nil || n != 4 {
		t.Fatalf("RevokePrefix = %d, %v", n, err)
	}
	for _, d := range all {
		if canLogin(d) {
			t.Errorf("%s still logs in", d["username"])
		}
	}

	short, d := mintOne(time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for canLogin(d) {
		if time.Now().After(deadline) {
			t.Fatal("short lease not revoked at expiry")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The role is gone before the worker records it: wait for the record.
	for {
		l, err := m.Lookup(ctx, short)
		if err != nil {
			t.Fatal(err)
		}
		if l.State == "revoked" {
			break
		}
		if time.Now().After(deadline.Add(2 * time.Second)) {
			t.Fatalf("short lease state %s", l.State)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Renewal is capped at the role's max TTL.
	rid, _ := mintOne(0)
	l, err := m.Renew(ctx, rid, 5*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.ExpiresAt.Sub(l.IssuedAt); got > 2*time.Hour {
		t.Errorf("renewed past max TTL: %v", got)
	}

	// Disable refuses while a lease is active, then revokes with it.
	if err := mounts.Disable(ctx, "db", nil); !errors.Is(err, engines.ErrMountInUse) {
		t.Errorf("disable: %v", err)
	}
	if err := mounts.Disable(ctx, "db", func(ctx context.Context, p string) error { _, err := m.RevokePrefix(ctx, p); return err }); err != nil {
		t.Fatal(err)
	}

	// Canary: no minted password in Sigil's files.
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, pw := range passwords {
			if bytes.Contains(b, []byte(pw)) {
				t.Errorf("password found in %s", f)
			}
		}
	}
}
