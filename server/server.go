// Package server serves a Sigil node (package node opens storage, key
// custody, the barrier, cluster membership and the core beneath it): it
// binds the listeners, chooses their TLS certificate, serves the gRPC API
// through its interceptors (authentication, the authorization table, audit,
// one error mapper) and the HTTP front end of package web (health, metrics,
// CA certificates, CRLs, OCSP, JWKS, SSH CA keys, ACME).
//
// Conversions between wire types and domain types live here; the roles below
// (node, core, ca, storage, hsm, barrier) know nothing of gRPC or HTTP.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/sigil-ca/sigil/authz"
	"github.com/sigil-ca/sigil/cluster"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/node"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/ratelimit"
	"github.com/sigil-ca/sigil/telemetry"
	"github.com/sigil-ca/sigil/web"
)

// Server is a Sigil authority.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	version string
	build   telemetry.BuildInfo
	metrics *telemetry.Metrics

	// node is everything below the transports: the data directory's lock,
	// storage, custody, cluster membership and the core.
	node *node.Node
	// core is node.Core(): the seal state and, while unsealed, the graph.
	core *core.Core
	// cluster is node.Cluster(), for the store gate (cluster.go).
	cluster *cluster.Node

	// publicCalls bounds the unauthenticated calls in flight (gate.go).
	publicCalls *ratelimit.Slots
	// healthCalls bounds health checks in flight, apart from publicCalls.
	healthCalls *ratelimit.Slots
	// authz is the method authorization table, enforced by the
	// interceptors in authz.go and gate.go (unaryLimit).
	authz *authz.Table

	// web is the HTTP front end served on the HTTPS and HTTP listeners.
	web *web.Front

	tlsMgr *core.ListenerCert // nil when the operator provides TLS files
	tlsCfg *tls.Config
	// filePair is the operator's listener certificate (tls.cert_file).
	filePair *tls.Certificate
	// listenerCert returns the listeners' current certificate (metrics).
	listenerCert func() *x509.Certificate

	// RootToken is set in dev mode: the token the operator exports.
	RootToken string
	// CACertPath is where the root certificate was written (dev mode, or
	// whenever the CA is available at start).
	CACertPath string

	httpsLn, grpcLn, httpLn net.Listener
	https, http             *http.Server
	grpc                    *grpc.Server
	health                  *health.Server

	closeOnce sync.Once
	closers   []func() error // run in reverse order by Close
}

// Options are the server's explicit dependencies beyond its configuration.
type Options struct {
	Version string
	Logger  *slog.Logger
}

// Open builds a server from cfg: it takes the data directory lock, binds
// the listeners, has the node open storage and (if configured) the HSM and
// unseal when it can, then sets up TLS and the gRPC and HTTPS servers. On
// error everything opened so far is closed again, the lock last.
func Open(ctx context.Context, cfg config.Config, opts Options) (_ *Server, err error) {
	derivedURL := cfg.PublicURL == ""
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: opts.Logger, version: opts.Version, build: telemetry.ReadBuildInfo(opts.Version), metrics: telemetry.New(opts.Version),
		publicCalls: ratelimit.NewSlots(maxPublicCalls, maxPublicStreamsPerConn, maxPublicCallsPerSource, "unauthenticated calls"),
		healthCalls: ratelimit.NewSlots(maxHealthCalls, maxHealthPerConn, maxHealthPerSource, "health checks")}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	// Every line logged with a call's context names its request id.
	s.log = slog.New(telemetry.RequestLogHandler{Handler: s.log.Handler(), ID: requestIDFrom})
	// A malformed access option is a bug: start-up fails, in every test
	// that starts a server.
	if s.authz, err = authz.Load(s.log, maxGRPCMessage); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// The lock comes first (a second server on the directory is refused by
	// name, not by a port clash) and is released last: its closer runs last.
	if s.node, err = node.New(cfg.DataDir); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.node.Close)
	if err := s.bind(ctx); err != nil {
		return nil, err
	}
	if derivedURL {
		// With port 0 the real port is known only now, and certificates must
		// carry URLs that answer.
		s.cfg.PublicURL = "http://" + s.HTTPAddr()
	}

	// The operator's TLS files are read before storage is opened (and
	// perhaps migrated), so a typo changes nothing on disk.
	if cfg.TLS.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s %s, %s %s: %w", config.Key("tls.cert_file"), cfg.TLS.CertFile, config.Key("tls.key_file"), cfg.TLS.KeyFile, err)
		}
		s.filePair = &pair
	}
	if err := s.node.Start(ctx, node.Options{Config: s.cfg, Logger: s.log, Version: s.version,
		GRPCAddr: s.GRPCAddr(), HTTPSAddr: s.HTTPSAddr(), IssuanceRefused: s.metrics.IssuanceRefused,
		ACMEBaseURL: func() string { return "https://" + s.HTTPSAddr() + "/acme" }}); err != nil {
		return nil, err
	}
	s.core, s.cluster = s.node.Core(), s.node.Cluster()
	s.metrics.Register(telemetry.LeaseStats(s.core)...)
	s.RootToken, s.CACertPath = s.node.RootToken(), s.node.CACertPath()
	if err := s.setupTLS(ctx); err != nil {
		return nil, err
	}
	s.metrics.Register(telemetry.NewStateCollector(s.core, s.listenerCert, s.log))
	s.web = web.New(s.core, s.metrics, s.log)
	s.setupServers()
	s.node.Join()
	return s, nil
}

// setupTLS chooses the listeners' certificate: the operator's files, or one
// issued by Sigil's own intermediate (which needs the CA unsealed now).
func (s *Server) setupTLS(ctx context.Context) error {
	a := s.current()
	if pair := s.filePair; pair != nil {
		s.tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*pair}}
		s.listenerCert = func() *x509.Certificate { return pair.Leaf }
		return nil
	}
	if a == nil || a.CA.Root() == nil {
		return fmt.Errorf("the listeners need a TLS certificate: set %s and %s, because this server starts sealed or without a CA and cannot issue its own",
			config.Key("tls.cert_file"), config.Key("tls.key_file"))
	}
	var err error
	if s.tlsMgr, err = s.core.NewListenerCert(ctx, core.ListenerNames(s.cfg.HTTPSAddr)); err != nil {
		return err
	}
	s.tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.tlsMgr.Certificate}
	s.listenerCert = s.tlsMgr.Leaf
	return nil
}

// bind opens both listening sockets; nothing is served until Serve.
func (s *Server) bind(ctx context.Context) error {
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
	if s.httpLn, err = lc.Listen(ctx, "tcp", s.cfg.HTTPAddr); err != nil {
		return fmt.Errorf("HTTP listener: %w", err)
	}
	s.closers = append(s.closers, func() error { return ignoreClosed(s.httpLn.Close()) })
	return nil
}

// setupServers builds the HTTPS and gRPC servers over the bound sockets.
func (s *Server) setupServers() {
	s.https = &http.Server{
		Handler:           s.web.Handler(),
		TLSConfig:         s.tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.http = &http.Server{
		Handler:           s.web.RevocationHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	grpcTLS := s.tlsCfg.Clone()
	grpcTLS.NextProtos = []string{"h2"}
	// Workloads may authenticate with their X.509-SVID instead of a token;
	// verifyWorkload checks it against the current hierarchy.
	grpcTLS.ClientAuth = tls.RequestClientCert
	// Limits before authentication (gate.go): the tap handle refuses a
	// non-public call without a credential before its body is read.
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(grpcTLS)),
		grpc.MaxRecvMsgSize(maxGRPCMessage),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.InTapHandle(s.tapGate),
		grpc.StatsHandler(gateStats{}),
		grpc.ConnectionTimeout(10*time.Second),
		// Clients may ping at most every 20 s (faster ones are cut off);
		// idle connections are closed after 15 minutes, dead ones found
		// within 2 minutes + 20 s.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 15 * time.Minute, Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.ChainUnaryInterceptor(s.unaryRequest, s.unaryRecover, s.unaryStoreGate, s.unaryAuth, s.unaryLimit, s.unaryAudit, s.unaryAuthz),
		grpc.ChainStreamInterceptor(s.streamRequest, s.streamAuth),
	)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	sigilv1.RegisterSysServiceServer(s.grpc, sysService{s: s})
	sigilv1.RegisterCAServiceServer(s.grpc, caService{s: s})
	sigilv1.RegisterPolicyServiceServer(s.grpc, policyService{s: s})
	sigilv1.RegisterTokenServiceServer(s.grpc, tokenService{s: s})
	sigilv1.RegisterAuditServiceServer(s.grpc, auditService{s: s})
	sigilv1.RegisterEngineServiceServer(s.grpc, engineService{s: s})
	sigilv1.RegisterLeaseServiceServer(s.grpc, leaseService{s: s})
	sigilv1.RegisterACMEServiceServer(s.grpc, acmeService{s: s})
	sigilv1.RegisterIdentityServiceServer(s.grpc, identityService{s: s})
	sigilv1.RegisterWrapServiceServer(s.grpc, wrapService{s: s})
	sigilv1.RegisterTokensServiceServer(s.grpc, tokensService{s: s})
	sigilv1.RegisterTransitServiceServer(s.grpc, transitService{s: s})
	sigilv1.RegisterKVServiceServer(s.grpc, kvService{s: s})
	sigilv1.RegisterSSHServiceServer(s.grpc, sshService{s: s})
	sigilv1.RegisterAuthMethodServiceServer(s.grpc, authMethodService{s: s})
	sigilv1.RegisterAgentServiceServer(s.grpc, agentService{s: s})
	sigilv1.RegisterClusterServiceServer(s.grpc, clusterService{s: s})
	sigilv1.RegisterSnapshotServiceServer(s.grpc, snapshotService{s: s})
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// HTTPSAddr is the bound HTTPS address (useful with port 0).
func (s *Server) HTTPSAddr() string { return s.httpsLn.Addr().String() }

// HTTPAddr is the bound plain-HTTP (revocation) address.
func (s *Server) HTTPAddr() string { return s.httpLn.Addr().String() }

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpcLn.Addr().String() }

// Serve serves until ctx is cancelled, then stops accepting, lets in-flight
// requests finish within the shutdown timeout, and closes storage.
func (s *Server) Serve(ctx context.Context) error {
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	if s.tlsMgr != nil {
		go s.tlsMgr.Run(bg)
	}

	errc := make(chan error, 3)
	if s.cfg.PprofAddr != "" {
		telemetry.ServePprof(bg, s.cfg.PprofAddr, s.log)
	}
	go func() {
		if err := s.http.Serve(s.httpLn); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("HTTP server: %w", err)
		}
	}()
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
	s.log.Info("sigil serving", "https", s.HTTPSAddr(), "grpc", s.GRPCAddr(), "http", s.HTTPAddr(), "storage", s.node.StorageBackend(), "custody", s.node.Custody(), "sealed", s.current() == nil)

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
	if err := s.http.Shutdown(sdCtx); err != nil {
		s.log.Warn("HTTP shutdown did not finish in time", "err", err)
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

// ReopenAuditFile reopens the audit file after logrotate moved it (SIGHUP).
func (s *Server) ReopenAuditFile() error { return s.node.ReopenAuditFile() }

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
