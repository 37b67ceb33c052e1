package testharness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/server"
)

// SigilOptions tunes StartSigil. The zero value is a dev server on SQLite
// with the software keystore.
type SigilOptions struct {
	// DataDir reuses a directory (for restart tests); empty means a new one.
	DataDir string
	// Storage is a postgres:// DSN; empty means embedded SQLite.
	Storage string
	// HSM is a PKCS#11 URI; empty means the software keystore.
	HSM string
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// Sigil is a running in-process server.
type Sigil struct {
	Server    *server.Server
	DataDir   string
	RootToken string
	// RootPool trusts the server's root CA.
	RootPool *x509.CertPool
	// Conn is a gRPC client connected over verified TLS with the root token.
	Conn *grpc.ClientConn
	stop func()
}

// Stop shuts the server down and waits for it.
func (s *Sigil) Stop() { s.stop() }

// StartSigil starts the real server in this process on free loopback ports
// and returns a ready client. The server stops in t.Cleanup.
func StartSigil(t testing.TB, opts SigilOptions) *Sigil {
	t.Helper()
	cfg := config.Default()
	cfg.Dev = true
	cfg.DataDir = opts.DataDir
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(t.TempDir(), "data")
	}
	cfg.HTTPSAddr = "127.0.0.1:0"
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Storage = opts.Storage
	cfg.HSM.URI = opts.HSM
	cfg.ShutdownTimeout = config.Duration(5 * time.Second)
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.Open(ctx, cfg, server.Options{Version: "test", Logger: logger})
	if err != nil {
		cancel()
		t.Fatalf("start sigil: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()

	rootPEM, err := os.ReadFile(srv.CACertPath)
	if err != nil {
		cancel()
		t.Fatalf("read root certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		cancel()
		t.Fatal("root certificate file holds no PEM certificate")
	}
	conn, err := grpc.NewClient(srv.GRPCAddr(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})),
		grpc.WithPerRPCCredentials(BearerToken(srv.RootToken)))
	if err != nil {
		cancel()
		t.Fatalf("dial sigil: %v", err)
	}
	s := &Sigil{Server: srv, DataDir: cfg.DataDir, RootToken: srv.RootToken, RootPool: pool, Conn: conn}
	var stopped bool
	s.stop = func() {
		if stopped {
			return
		}
		stopped = true
		conn.Close()
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("sigil server: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("sigil server did not stop within 30s")
		}
	}
	t.Cleanup(s.stop)
	return s
}

// BearerToken is gRPC per-RPC credentials carrying a Sigil token.
type BearerToken string

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b BearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (BearerToken) RequireTransportSecurity() bool { return true }
