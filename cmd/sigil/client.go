package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// clientFlags are the connection settings every client command takes, with
// SIGIL_ADDR, SIGIL_TOKEN and SIGIL_CACERT as defaults.
type clientFlags struct {
	addr, token, cacert, format string
	clientCert, clientKey       string
}

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints usage to the command's stderr.
func newFlagSet(env *cliEnv, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: %s\n\nFlags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

func (c *clientFlags) register(fs *flag.FlagSet, env *cliEnv, printsData bool) {
	addr := env.getenv("SIGIL_ADDR")
	if addr == "" {
		addr = "127.0.0.1:8444"
	}
	fs.StringVar(&c.addr, "addr", addr, "gRPC address of the server (env SIGIL_ADDR)")
	fs.StringVar(&c.token, "token", env.getenv("SIGIL_TOKEN"), "API token (env SIGIL_TOKEN)")
	fs.StringVar(&c.cacert, "cacert", env.getenv("SIGIL_CACERT"), "PEM file of the CA to trust for the server's TLS certificate (env SIGIL_CACERT)")
	fs.StringVar(&c.clientCert, "client-cert", env.getenv("SIGIL_CLIENT_CERT"), "X.509-SVID (PEM chain) to authenticate with instead of a token (env SIGIL_CLIENT_CERT)")
	fs.StringVar(&c.clientKey, "client-key", env.getenv("SIGIL_CLIENT_KEY"), "private key of --client-cert (env SIGIL_CLIENT_KEY)")
	if printsData {
		fs.StringVar(&c.format, "format", "text", "output format: text or json")
	}
}

// parseFlags parses args, mapping flag errors to usage errors and -h to help.
// Flags may follow positional arguments (`sigil ca revoke SERIAL --reason
// R`): Go's flag package stops at the first positional argument, so parsing
// resumes after each one.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return errHelp
			}
			return &usageError{err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// After an explicit "--" everything is positional.
		if len(args) >= len(rest)+1 && args[len(args)-len(rest)-1] == "--" {
			positional = append(positional, rest...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	// Parse the terminator alone so fs.Args() holds the positional arguments.
	return fs.Parse(append([]string{"--"}, positional...))
}

func (c *clientFlags) validate() error {
	if c.format != "" && c.format != "text" && c.format != "json" {
		return usagef("--format must be text or json, not %q", c.format)
	}
	if c.addr == "" {
		return usagef("--addr (or SIGIL_ADDR) is required")
	}
	if (c.clientCert == "") != (c.clientKey == "") {
		return usagef("--client-cert and --client-key go together")
	}
	return nil
}

// tokenCreds sends the bearer token with every call; it requires TLS so a
// token never crosses the network in clear.
type tokenCreds string

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return true }

// dial connects to the server over verified TLS.
func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.cacert != "" {
		pem, err := os.ReadFile(c.cacert)
		if err != nil {
			return nil, fmt.Errorf("read --cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate found", c.cacert)
		}
		tlsCfg.RootCAs = pool
	}
	if c.clientCert != "" {
		pair, err := tls.LoadX509KeyPair(c.clientCert, c.clientKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{pair}
	}
	// Responses up to 8 MiB: a batch decrypt of 4 MiB arrives base64'd in
	// its envelope.
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8 << 20))}
	if c.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds(strings.TrimSpace(c.token))))
	}
	conn, err := grpc.NewClient(c.addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.addr, err)
	}
	return conn, nil
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// withConn checks the connection flags, dials over verified TLS and runs fn
// within timeout.
func withConn(ctx context.Context, cf *clientFlags, timeout time.Duration, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	if err := cf.validate(); err != nil {
		return err
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return fn(ctx, conn)
}

// call parses flags, checks for minArgs..maxArgs positional arguments
// (maxArgs < 0: no upper bound) and runs fn over a connection.
func call(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, args []string, minArgs, maxArgs int, timeout time.Duration,
	fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch n := fs.NArg(); {
	case minArgs == maxArgs && n != minArgs:
		return usagef("%s takes %d argument(s), got %d", fs.Name(), minArgs, n)
	case n < minArgs || (maxArgs >= 0 && n > maxArgs):
		return usagef("%s: wrong number of arguments (%d)", fs.Name(), n)
	}
	return withConn(ctx, cf, timeout, fn)
}

// connCall is call for the usual case: exactly nargs arguments, 30 s.
func connCall(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, args []string, nargs int, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	return call(ctx, fs, cf, args, nargs, nargs, 30*time.Second, fn)
}
