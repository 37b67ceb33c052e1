// Package server wires Sigil together and serves it: it opens storage, key
// custody, the barrier and the CA from one configuration, then serves the
// gRPC API and the HTTPS endpoints (health, metrics, CA certificates, CRLs,
// OCSP) over TLS with a certificate Sigil issues to itself.
//
// Conversions between wire types and domain types live here; the roles below
// (ca, storage, hsm, barrier) know nothing of gRPC or HTTP.
package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/hsm"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage"
)

// maxGRPCMessage bounds a request; the largest legitimate one is a CSR.
const maxGRPCMessage = 1 << 20

// authority is what the transport needs from the CA.
type authority interface {
	Root() *x509.Certificate
	Chain() []*x509.Certificate
	Sign(ctx context.Context, req ca.SignRequest) (*ca.Issued, error)
	Revoke(ctx context.Context, serial string, reason int) error
	List(ctx context.Context, f storage.CertFilter) ([]*storage.Certificate, string, error)
	CRL(ctx context.Context, issuerID string, shard int) ([]byte, error)
	OCSP(ctx context.Context, req []byte) ([]byte, error)
	IssuerCertificate(ctx context.Context, id string) (*x509.Certificate, error)
	IssuerID(cert *x509.Certificate) string
}

// Server is a running Sigil authority.
type Server struct {
	cfg         config.Config
	log         *slog.Logger
	version     string
	lock        *dirLock
	store       storage.Store
	custody     hsm.Custody
	custodyKind string
	ca          authority
	tokens      *auth.Tokens
	tls         *tlsManager
	metrics     *metrics

	// RootToken is set in dev mode: the token the operator exports.
	RootToken string
	// CACertPath is where the root certificate was written.
	CACertPath string

	httpsLn, grpcLn net.Listener
	https           *http.Server
	grpc            *grpc.Server
	health          *health.Server

	closeOnce sync.Once
	closers   []func() error // run in reverse order by Close
}

// Options are the server's explicit dependencies beyond its configuration.
type Options struct {
	Version string
	Logger  *slog.Logger
}

// Open builds a server from cfg: it takes the data directory lock, opens
// storage and custody, loads (dev: creates) the CA, and binds the listeners.
// On error everything opened so far is closed again.
func Open(ctx context.Context, cfg config.Config, opts Options) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: opts.Logger, version: opts.Version, metrics: newMetrics(opts.Version)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if s.lock, err = lockDir(cfg.DataDir); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, func() error { s.lock.release(); return nil })

	if err := s.openBackends(ctx); err != nil {
		return nil, err
	}
	if err := s.listen(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// openBackends opens storage, the barrier, custody, the CA and tokens.
func (s *Server) openBackends(ctx context.Context) error {
	b, err := openBackends(ctx, s.cfg, s.log)
	if b != nil {
		s.closers = append(s.closers, b.close)
	}
	if err != nil {
		return err
	}
	s.store, s.custody, s.custodyKind, s.ca, s.tokens = b.store, b.custody, b.custodyKind, b.ca, b.tokens

	if s.cfg.Dev {
		if err := s.devBootstrap(ctx, b.ca); err != nil {
			return err
		}
	}
	if s.ca.Root() == nil {
		return errors.New("the CA is not initialised: run `sigil ca init` first (or start with --dev)")
	}
	host, _, _ := net.SplitHostPort(s.cfg.HTTPSAddr)
	names := []string{"localhost", "127.0.0.1"}
	if host != "" && host != "localhost" && host != "127.0.0.1" && host != "0.0.0.0" && host != "::" {
		names = append(names, host)
	}
	if s.tls, err = newTLSManager(ctx, s.custody, b.ca, names, s.log); err != nil {
		return err
	}
	s.CACertPath = filepath.Join(s.cfg.DataDir, "ca.pem")
	root := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.ca.Root().Raw})
	if err := writeFileAtomic(s.CACertPath, root, 0o644); err != nil {
		return fmt.Errorf("write root certificate: %w", err)
	}
	return nil
}

// devBootstrap creates, on first start only, the CA hierarchy and the root
// token of a dev server; later starts reuse both.
func (s *Server) devBootstrap(ctx context.Context, authority *ca.Authority) error {
	if authority.Root() == nil {
		s.log.Info("initialising a new dev CA hierarchy")
		err := authority.InitHierarchy(ctx, ca.InitRequest{CommonName: s.cfg.CA.CommonName, KeyType: hsm.ECDSAP256})
		if err != nil {
			return fmt.Errorf("initialise CA: %w", err)
		}
	}
	tokenPath := filepath.Join(s.cfg.DataDir, "root-token")
	existing, err := os.ReadFile(tokenPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read root token: %w", err)
	}
	tok, err := s.tokens.EnsureRoot(ctx, string(trimSpace(existing)))
	if err != nil {
		return fmt.Errorf("%s: %w", tokenPath, err)
	}
	if len(existing) == 0 {
		if err := writeFileAtomic(tokenPath, []byte(tok+"\n"), 0o600); err != nil {
			return fmt.Errorf("write root token: %w", err)
		}
	}
	s.RootToken = tok
	return nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// writeFileAtomic writes via a temporary file and rename, so a crash never
// leaves a half-written file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func (s *Server) listen(ctx context.Context) error {
	var lc net.ListenConfig
	var err error
	if s.httpsLn, err = lc.Listen(ctx, "tcp", s.cfg.HTTPSAddr); err != nil {
		return fmt.Errorf("HTTPS listener: %w", err)
	}
	s.closers = append(s.closers, func() error { return ignoreClosed(s.httpsLn.Close()) })
	if s.grpcLn, err = lc.Listen(ctx, "tcp", s.cfg.GRPCAddr); err != nil {
		return fmt.Errorf("gRPC listener: %w", err)
	}
	s.closers = append(s.closers, func() error { return ignoreClosed(s.grpcLn.Close()) })

	tlsCfg := s.tls.config()
	s.https = &http.Server{
		Handler:           s.httpHandler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	grpcTLS := tlsCfg.Clone()
	grpcTLS.NextProtos = []string{"h2"}
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(grpcTLS)),
		grpc.MaxRecvMsgSize(maxGRPCMessage),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.ChainUnaryInterceptor(s.metrics.unaryInterceptor, s.unaryRecover, s.unaryAuth),
		grpc.ChainStreamInterceptor(s.streamAuth),
	)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	sigilv1.RegisterSysServiceServer(s.grpc, sysService{s: s})
	sigilv1.RegisterCAServiceServer(s.grpc, caService{s: s})
	return nil
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// HTTPSAddr is the bound HTTPS address (useful with port 0).
func (s *Server) HTTPSAddr() string { return s.httpsLn.Addr().String() }

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// Serve serves until ctx is cancelled, then stops accepting, lets in-flight
// requests finish within the shutdown timeout, and closes storage.
func (s *Server) Serve(ctx context.Context) error {
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	go s.tls.run(bg)

	errc := make(chan error, 2)
	go func() {
		if err := s.https.ServeTLS(s.httpsLn, "", ""); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("HTTPS server: %w", err)
		}
	}()
	go func() {
		if err := s.grpc.Serve(s.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("gRPC server: %w", err)
		}
	}()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.log.Info("sigil serving", "https", s.HTTPSAddr(), "grpc", s.GRPCAddr(), "storage", s.store.Backend(), "custody", s.custodyKind)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.log.Info("shutting down", "timeout", time.Duration(s.cfg.ShutdownTimeout))
	s.health.Shutdown()
	stopBG()
	sdCtx, cancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.ShutdownTimeout))
	defer cancel()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	if err := s.https.Shutdown(sdCtx); err != nil {
		s.log.Warn("HTTPS shutdown did not finish in time", "err", err)
	}
	select {
	case <-done:
	case <-sdCtx.Done():
		s.log.Warn("gRPC shutdown did not finish in time; stopping")
		s.grpc.Stop()
	}
	if err := s.Close(); err != nil && serveErr == nil {
		serveErr = err
	}
	return serveErr
}

// Close releases everything Open acquired, in reverse order.
func (s *Server) Close() error {
	var errs []error
	s.closeOnce.Do(func() {
		for i := len(s.closers) - 1; i >= 0; i-- {
			if err := s.closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
	})
	return errors.Join(errs...)
}
