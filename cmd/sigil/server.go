package main

import (
	"context"
	"encoding/pem"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/server"
)

// serverFlags binds each flag to the config field it overrides. Flags are
// applied after the file, and only those given on the command line.
func serverFlags(fs *flag.FlagSet) (configPath *string, apply func(*config.Config)) {
	configPath = fs.String("config", "", "YAML configuration file")
	def := config.Default()
	dev := fs.Bool("dev", false, "dev mode: self-contained authority that unseals itself from DIR/dev-unseal.key")
	data := fs.String("data", def.DataDir, "data directory")
	httpsAddr := fs.String("https-addr", def.HTTPSAddr, "HTTPS listen address (health, metrics, CA, CRL, OCSP)")
	grpcAddr := fs.String("grpc-addr", def.GRPCAddr, "gRPC listen address")
	httpAddr := fs.String("http-addr", def.HTTPAddr, "plain-HTTP listen address for CRLs, OCSP and CA certificates")
	publicURL := fs.String("public-url", "", "base URL written into certificates' CDP and AIA (default http://HTTP-ADDR)")
	storage := fs.String("storage", "", "storage: empty for embedded SQLite in the data directory, or a postgres:// URL")
	hsmURI := fs.String("hsm", "", "RFC 7512 PKCS#11 URI of the HSM token for key custody")
	tlsCert := fs.String("tls-cert", "", "PEM certificate (chain) for the listeners; default: issued by Sigil's own CA")
	tlsKey := fs.String("tls-key", "", "PEM private key for --tls-cert")
	logLevel := fs.String("log-level", def.Log.Level, "log level: debug, info, warn, error")
	logFormat := fs.String("log-format", def.Log.Format, "log format: text or json")
	acmeHTTP01 := fs.Int("acme-http01-port", 0, "port ACME http-01 validation connects to (default 80)")
	acmeTLSALPN := fs.Int("acme-tlsalpn01-port", 0, "port ACME tls-alpn-01 validation connects to (default 443)")
	acmeDNS := fs.String("acme-dns-resolver", "", "DNS resolver for ACME validation: HOST:PORT asked directly, or system (the system resolver, /etc/hosts included) (default: the first nameserver of /etc/resolv.conf)")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this loopback address (profiling only)")
	shutdown := fs.Duration("shutdown-timeout", time.Duration(def.ShutdownTimeout), "bound on finishing in-flight requests at shutdown")

	apply = func(c *config.Config) {
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "dev":
				c.Dev = *dev
			case "data":
				c.DataDir = *data
			case "https-addr":
				c.HTTPSAddr = *httpsAddr
			case "grpc-addr":
				c.GRPCAddr = *grpcAddr
			case "http-addr":
				c.HTTPAddr = *httpAddr
			case "public-url":
				c.PublicURL = *publicURL
			case "storage":
				c.Storage = *storage
			case "hsm":
				c.HSM.URI = *hsmURI
			case "tls-cert":
				c.TLS.CertFile = *tlsCert
			case "tls-key":
				c.TLS.KeyFile = *tlsKey
			case "log-level":
				c.Log.Level = *logLevel
			case "log-format":
				c.Log.Format = *logFormat
			case "acme-http01-port":
				c.ACME.HTTP01Port = *acmeHTTP01
			case "acme-tlsalpn01-port":
				c.ACME.TLSALPN01Port = *acmeTLSALPN
			case "acme-dns-resolver":
				c.ACME.DNSResolver = *acmeDNS
			case "pprof":
				c.PprofAddr = *pprofAddr
			case "shutdown-timeout":
				c.ShutdownTimeout = config.Duration(*shutdown)
			}
		})
	}
	return configPath, apply
}

// loadServerConfig is the one place the server's configuration is loaded:
// defaults, then the file, then flags.
func loadServerConfig(env *cliEnv, args []string) (config.Config, error) {
	fs := newFlagSet(env, "server", "sigil server [--dev] [--data DIR] [--config FILE] [flags]")
	configPath, apply := serverFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return config.Config{}, err
	}
	if fs.NArg() > 0 {
		return config.Config{}, usagef("server takes no arguments, got %q", fs.Args())
	}
	cfg := config.Default()
	if *configPath != "" {
		var err error
		if cfg, err = config.LoadFile(*configPath, cfg); err != nil {
			return cfg, &usageError{err.Error()}
		}
	}
	apply(&cfg)
	if err := cfg.Validate(); err != nil {
		return cfg, &usageError{"config: " + err.Error()}
	}
	return cfg, nil
}

func newLogger(env *cliEnv, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(env.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(env.stderr, opts))
}

// serverGCPercent is the server's GOGC unless the environment sets one.
// Its live heap is small (tens of MiB) and nearly all its garbage lives
// for one request, so collecting at three times the live heap instead of
// twice halves the collections for a few MiB: measured side by side
// (docs/benchmarks.md), sign 1,300 -> 1,390/s at 16 clients (1.2 -> 1.1
// ms of CPU per certificate), kv get 2,657 -> 2,800/s, RSS +6 to +10 MiB.
const serverGCPercent = 200

func runServer(ctx context.Context, env *cliEnv, args []string) error {
	cfg, err := loadServerConfig(env, args)
	if err != nil {
		return err
	}
	log := newLogger(env, cfg.Log)
	if env.getenv("GOGC") == "" {
		debug.SetGCPercent(serverGCPercent)
	}
	srv, err := server.Open(ctx, cfg, server.Options{Version: version, Logger: log})
	if err != nil {
		return err
	}
	if srv.RootToken != "" {
		caPath, err := filepath.Abs(srv.CACertPath)
		if err != nil {
			caPath = srv.CACertPath
		}
		// The operator's export lines go to stdout, never to the log, as
		// lines a shell can run as they are.
		fmt.Fprintf(env.stdout, "Sigil dev server is running (dev mode: never for production). Paste these lines into your shell:\n\n")
		fmt.Fprintf(env.stdout, "export SIGIL_ADDR=%s\nexport SIGIL_TOKEN=%s\nexport SIGIL_CACERT=%s\n\n",
			shellQuote(srv.GRPCAddr()), shellQuote(srv.RootToken), shellQuote(caPath))
		if fp, err := fileFingerprint(caPath); err == nil {
			fmt.Fprintf(env.stdout, "# On another machine, pin this root first:\n# sigil ca bootstrap --ca-url https://%s --fingerprint %s\n\n", srv.HTTPSAddr(), fp)
		}
	}
	// SIGHUP reopens the audit file, for logrotate.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := srv.ReopenAuditFile(); err != nil {
					log.Error("reopen audit file", "err", err)
				} else {
					log.Info("audit file reopened")
				}
			}
		}
	}()
	return srv.Serve(ctx)
}

// fileFingerprint is the SHA-256 fingerprint of the first certificate in a
// PEM file.
func fileFingerprint(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return "", fmt.Errorf("%s: no PEM certificate", path)
	}
	return fingerprint(block.Bytes), nil
}
