package node

import (
	"bytes"
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/internal/flock"
	"github.com/sigil-ca/sigil/snapshot"
	"github.com/sigil-ca/sigil/storage/backends"
)

// testConfig is a node on SQLite in dir: dev (unsealed, with a CA and a
// root token) or production (uninitialised, so sealed).
func testConfig(dir string, dev bool) config.Config {
	cfg := config.Default()
	cfg.Dev = dev
	cfg.DataDir = dir
	cfg.PublicURL = "http://127.0.0.1:1"
	return cfg
}

func start(t *testing.T, cfg config.Config) *Node {
	t.Helper()
	n, err := New(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	if err := n.Start(context.Background(), Options{Config: cfg, Version: "test", GRPCAddr: "127.0.0.1:2", HTTPSAddr: "127.0.0.1:3",
		ACMEBaseURL: func() string { return "https://127.0.0.1:3/acme" }}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLockContention: a second node on a locked directory is refused with
// the holder's pid, in this process or any other; Close frees it.
func TestLockContention(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	n, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(dir)
	if err == nil {
		t.Fatal("second node on a locked data directory")
	}
	if want := "in use by another sigil server (pid " + strconv.Itoa(os.Getpid()) + ")"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n2, err := New(dir)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	_ = n2.Close()
}

// TestStart: what a node reports after Start, dev and sealed, on SQLite.
func TestStart(t *testing.T) {
	for _, tt := range []struct {
		name     string
		dev      bool
		unsealed bool
	}{
		{"dev: unsealed with a CA and root token", true, true},
		{"uninitialised: sealed, no root written", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			n := start(t, testConfig(dir, tt.dev))
			if got := n.Core().Current() != nil; got != tt.unsealed {
				t.Errorf("unsealed = %v, want %v", got, tt.unsealed)
			}
			if n.StorageBackend() != "sqlite" || n.Custody() != "software" {
				t.Errorf("status facts: storage %q, custody %q", n.StorageBackend(), n.Custody())
			}
			if err := n.Cluster().Healthy(); err != nil {
				t.Errorf("cluster of one unhealthy: %v", err)
			}
			if (n.RootToken() != "") != tt.dev {
				t.Errorf("root token %q in dev=%v", n.RootToken(), tt.dev)
			}
			if !tt.unsealed {
				if n.CACertPath() != "" {
					t.Errorf("a sealed node wrote %s", n.CACertPath())
				}
				return
			}
			if n.CACertPath() != filepath.Join(dir, CACertFile) {
				t.Fatalf("CACertPath = %q", n.CACertPath())
			}
			pemBytes, err := os.ReadFile(n.CACertPath())
			if err != nil {
				t.Fatal(err)
			}
			root, err := n.Core().Root()
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := pem.Decode(pemBytes); b == nil || !bytes.Equal(b.Bytes, root.Raw) {
				t.Error("ca.pem is not the core's root")
			}
		})
	}
}

// TestDevRestart: a dev node restarted on its directory keeps its root and
// its root token.
func TestDevRestart(t *testing.T) {
	cfg := testConfig(filepath.Join(t.TempDir(), "data"), true)
	n := start(t, cfg)
	token := n.RootToken()
	root, _ := n.Core().Root()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n2 := start(t, cfg)
	root2, _ := n2.Core().Root()
	if n2.RootToken() != token || !root2.Equal(root) {
		t.Error("root token or root certificate changed across restart")
	}
}

// TestStartErrorCleanup: whatever step fails, Close releases what Start
// opened, and the directory can be used again.
func TestStartErrorCleanup(t *testing.T) {
	for _, tt := range []struct {
		name    string
		prepare func(t *testing.T, cfg *config.Config)
		want    string
	}{
		{"another data directory", func(t *testing.T, cfg *config.Config) { cfg.DataDir = t.TempDir() }, "is not the locked"},
		{"storage", func(t *testing.T, cfg *config.Config) {
			// A directory where the database file should be.
			if err := os.Mkdir(filepath.Join(cfg.DataDir, backends.DBFile), 0o700); err != nil {
				t.Fatal(err)
			}
		}, backends.DBFile},
		{"custody, after storage opened", func(t *testing.T, cfg *config.Config) {
			cfg.HSM.URI = "pkcs11:module-path=" + filepath.Join(t.TempDir(), "missing.so") + ";token=sigil?pin-value=1234"
		}, "missing.so"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			n, err := New(dir)
			if err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(dir, true)
			tt.prepare(t, &cfg)
			err = n.Start(context.Background(), Options{Config: cfg})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start error %v, want one naming %q", err, tt.want)
			}
			if err := n.Close(); err != nil {
				t.Fatalf("Close after a failed Start: %v", err)
			}
			if n.store != nil {
				if perr := n.store.Ping(context.Background()); perr == nil {
					t.Error("storage still open after Close")
				}
			}
			l, err := flock.TryAcquire(filepath.Join(dir, LockFile))
			if err != nil {
				t.Fatalf("lock still held after Close: %v", err)
			}
			l.Release()
		})
	}
}

// TestCloseOrder: Close leaves the cluster, seals the core, locks the
// barrier and closes storage while it still holds the directory's lock,
// which it releases last. A probe placed just before the lock's release
// sees the rest already closed and the lock still held.
func TestCloseOrder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	n := start(t, testConfig(dir, true))
	n.Join()
	var probe []string
	// closers[0] releases the lock; the probe runs just before it.
	n.closers = append(n.closers[:1:1], append([]func() error{func() error {
		if n.Core().Current() != nil {
			probe = append(probe, "core unsealed")
		}
		if !n.Barrier().Sealed() {
			probe = append(probe, "barrier open")
		}
		if n.store.Ping(context.Background()) == nil {
			probe = append(probe, "storage open")
		}
		if l, err := flock.TryAcquire(filepath.Join(dir, LockFile)); err == nil {
			l.Release()
			probe = append(probe, "lock released early")
		}
		return nil
	}}, n.closers[1:]...)...)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if len(probe) != 0 {
		t.Errorf("before the lock's release: %v", probe)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	l, err := flock.TryAcquire(filepath.Join(dir, LockFile))
	if err != nil {
		t.Fatalf("lock held after Close: %v", err)
	}
	l.Release()
}

// TestSnapshot: a SQLite node's snapshot verifies; Start runs once.
func TestSnapshot(t *testing.T) {
	n := start(t, testConfig(filepath.Join(t.TempDir(), "data"), true))
	var buf bytes.Buffer
	hdr, err := n.Snapshot(context.Background(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snap")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := snapshot.Verify(context.Background(), path)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if got.SHA256 != hdr.SHA256 || got.Version != "test" {
		t.Errorf("verified header %+v, saved %+v", got, hdr)
	}
	if err := n.Start(context.Background(), Options{Config: n.cfg}); err == nil {
		t.Error("second Start succeeded")
	}
}
