package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// defaultAddr is where the CLI looks for a server when SIGIL_ADDR is unset.
const defaultAddr = "127.0.0.1:8444"

// clientFlags are the connection and output settings every client command
// takes, with SIGIL_ADDR, SIGIL_TOKEN and SIGIL_CACERT as defaults.
type clientFlags struct {
	addr, token, cacert, format, field string
	clientCert, clientKey              string
	// addrFrom names where addr came from, for error messages.
	addrFrom string
	// perRPC, when set, supplies the token per call instead of token (a
	// --login-jwt login kept current in memory).
	perRPC credentials.PerRPCCredentials
	env    *cliEnv
}

// commonFlags are the flags register adds; help lists them apart from a
// command's own.
var commonFlags = map[string]bool{"addr": true, "token": true, "cacert": true, "client-cert": true,
	"client-key": true, "format": true, "field": true}

// newFlagSet returns a flag set that reports errors instead of exiting or
// printing them: run prints a usage error once. --help prints to stdout.
func newFlagSet(env *cliEnv, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	summary := env.summary
	fs.Usage = func() { printFlagHelp(env.stdout, fs, usage, summary) }
	// A usage error repeats this line, so the fix is in front of the user.
	env.usage = usage
	return fs
}

// printFlagHelp prints a command's usage line, summary and flags, with
// --flag spelling and the connection flags last.
func printFlagHelp(w io.Writer, fs *flag.FlagSet, usage, summary string) {
	fmt.Fprintf(w, "Usage: %s\n", usage)
	if summary != "" {
		fmt.Fprintf(w, "\n%s\n", summary)
	}
	var own, common []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if commonFlags[f.Name] {
			common = append(common, f)
		} else {
			own = append(own, f)
		}
	})
	section := func(title string, list []*flag.Flag) {
		if len(list) == 0 {
			return
		}
		fmt.Fprintf(w, "\n%s:\n", title)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, f := range list {
			typ, help := flag.UnquoteUsage(f)
			switch f.Value.(type) {
			case *ttlValue:
				typ = "duration"
			case secretValue:
				typ = "string"
			}
			if f.Name == "addr" {
				typ = "host:port"
			}
			name := "--" + f.Name
			if typ != "" {
				name += " " + typ
			}
			if d := f.DefValue; d != "" && d != "0" && d != "0s" && d != "false" && d != "[]" {
				help += fmt.Sprintf(" (default %s)", d)
			}
			fmt.Fprintf(tw, "  %s\t%s\n", name, help)
		}
		tw.Flush()
	}
	section("Flags", own)
	section("Connection and output flags", common)
}

// secretValue is a flag whose value never appears in help: its default
// comes from the environment and String, which help uses to show
// defaults, reports nothing.
type secretValue struct{ v *string }

func (s secretValue) String() string     { return "" }
func (s secretValue) Set(v string) error { *s.v = v; return nil }

// envState describes an environment variable in help without its value.
func envState(env *cliEnv, name string) string {
	if env.getenv(name) != "" {
		return "env " + name + ", set"
	}
	return "env " + name + ", unset"
}

func (c *clientFlags) register(fs *flag.FlagSet, env *cliEnv) {
	c.env = env
	c.addr, c.addrFrom = env.getenv("SIGIL_ADDR"), "SIGIL_ADDR"
	if c.addr == "" {
		c.addr, c.addrFrom = defaultAddr, "the default address; set SIGIL_ADDR"
	}
	fs.Func("addr", "gRPC address of the server, HOST:PORT or https://HOST:PORT; several, comma-separated, for the nodes of a cluster (env SIGIL_ADDR, default "+defaultAddr+")", func(s string) error {
		c.addr, c.addrFrom = s, "--addr"
		return nil
	})
	c.token = env.getenv("SIGIL_TOKEN")
	if c.token == "" {
		c.token = storedToken(env) // left by `sigil login`
	}
	fs.Var(secretValue{&c.token}, "token", "API token ("+envState(env, "SIGIL_TOKEN")+")")
	fs.StringVar(&c.cacert, "cacert", env.getenv("SIGIL_CACERT"), "PEM file of the CA to trust for the server's TLS certificate (env SIGIL_CACERT; default: the root pinned by sigil ca bootstrap)")
	fs.StringVar(&c.clientCert, "client-cert", env.getenv("SIGIL_CLIENT_CERT"), "X.509-SVID (PEM chain) to authenticate with instead of a token (env SIGIL_CLIENT_CERT)")
	fs.StringVar(&c.clientKey, "client-key", env.getenv("SIGIL_CLIENT_KEY"), "private key of --client-cert (env SIGIL_CLIENT_KEY)")
	fs.StringVar(&c.format, "format", "text", "output format: text or json")
	fs.StringVar(&c.field, "field", "", "print only this field of the JSON output, raw (e.g. data.password, serial)")
}

// parseFlags parses args, mapping flag errors to usage errors and -h to help.
// Flags may follow positional arguments (`sigil ca revoke SERIAL --reason
// R`): Go's flag package stops at the first positional argument, so parsing
// resumes after each one.
func parseFlags(fs *flag.FlagSet, args []string) error {
	// The flag package prints usage on every error; help is printed here,
	// only when asked for, and a usage error is printed once by run.
	usage := fs.Usage
	fs.Usage = func() {}
	defer func() { fs.Usage = usage }()
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				usage()
				return errHelp
			}
			return flagUsageError(fs, err)
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

// flagUsageError rewrites the flag package's messages in --flag spelling,
// with a suggestion for a mistyped flag.
func flagUsageError(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: "); ok {
		name = strings.TrimLeft(name, "-")
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		out := fmt.Sprintf("unknown flag --%s", name)
		if s := suggest(name, names); s != "" {
			out += fmt.Sprintf("; did you mean --%s?", s)
		}
		return &usageError{msg: out}
	}
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		// invalid value "V" for flag -NAME: REASON
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			v, _ := strconv.Unquote(q)
			if name, reason, ok := strings.Cut(strings.TrimPrefix(rest[len(q):], " for flag -"), ": "); ok {
				return &usageError{msg: fmt.Sprintf("--%s %s: %s", name, v, reason)}
			}
		}
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return &usageError{msg: fmt.Sprintf("--%s needs a value", name)}
	}
	return &usageError{msg: msg}
}

func (c *clientFlags) validate() error {
	if c.format != "text" && c.format != "json" {
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

// normalizeAddr accepts HOST:PORT or https://HOST:PORT and returns
// HOST:PORT. A port is required: guessing 443 would find the wrong server.
func normalizeAddr(addr, from string) (string, error) {
	hostport := addr
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			return "", usagef("%s %q is not HOST:PORT or https://HOST:PORT", from, addr)
		}
		switch u.Scheme {
		case "https", "grpcs":
		case "http":
			return "", usagef("%s %q: Sigil's gRPC API needs TLS; use https://%s", from, addr, u.Host)
		default:
			return "", usagef("%s %q: scheme %q is not supported; use HOST:PORT or https://HOST:PORT", from, addr, u.Scheme)
		}
		if u.Path != "" && u.Path != "/" {
			return "", usagef("%s %q: the gRPC address takes no path", from, addr)
		}
		hostport = u.Host
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		if strings.Contains(err.Error(), "missing port") || (err == nil && host == "") {
			return "", usagef("%s %q has no port: use HOST:PORT, e.g. %s", from, addr, defaultAddr)
		}
		return "", usagef("%s %q is not HOST:PORT or https://HOST:PORT: %v", from, addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", usagef("%s %q: port %q is not a number from 1 to 65535", from, addr, port)
	}
	return net.JoinHostPort(host, port), nil
}

// defaultCACertPath is where `sigil ca bootstrap` pins the root and where
// the CLI looks when SIGIL_CACERT is unset.
func defaultCACertPath(env *cliEnv) string {
	dir := env.getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home := env.getenv("HOME")
		if home == "" {
			return ""
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "sigil", "root.pem")
}

// tokenCreds sends the bearer token with every call; it requires TLS so a
// token never crosses the network in clear.
type tokenCreds string

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return true }

// dial connects to the server over verified TLS. With several addresses
// (a,b,c: the nodes of a cluster) calls are spread over the nodes that
// answer, and a call refused as Unavailable is retried on another node
// when that is safe (retryInterceptor).
func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	addrs, err := normalizeAddrs(c.addr, c.addrFrom)
	if err != nil {
		return nil, err
	}
	c.addr = strings.Join(addrs, ",")
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	cacert := c.cacert
	if cacert == "" && c.env != nil {
		if p := defaultCACertPath(c.env); p != "" {
			if _, err := os.Stat(p); err == nil {
				cacert = p
			}
		}
	}
	if cacert != "" {
		pem, err := os.ReadFile(cacert)
		if err != nil {
			return nil, fmt.Errorf("read --cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate found", cacert)
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
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8 << 20)),
		grpc.WithChainUnaryInterceptor(c.explainInterceptor, retryInterceptor)}
	if c.perRPC != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(c.perRPC))
	} else if c.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds(strings.TrimSpace(c.token))))
	}
	target := addrs[0]
	if len(addrs) > 1 {
		target, opts = clusterTarget(addrs, opts)
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.addr, err)
	}
	return conn, nil
}

// requestIDKey is the metadata key under which the server names a request.
const requestIDKey = "x-request-id"

// explainInterceptor turns a failed call into an rpcError: the server's
// message, its request id, and for transport failures what to do.
func (c *clientFlags) explainInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var header, trailer metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&header), grpc.Trailer(&trailer))...)
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	rid := ""
	for _, md := range []metadata.MD{header, trailer} {
		if v := md.Get(requestIDKey); len(v) > 0 && v[0] != "" {
			rid = v[0]
			break
		}
	}
	e := &rpcError{st: st, requestID: rid}
	// A request id means the server answered: a "connection refused" in
	// its message is the server's own (an engine's database), not this
	// CLI failing to reach the server, so no transport hint.
	if rid == "" && !strings.Contains(st.Message(), "(request id ") {
		e.hint = c.hint(st)
	}
	return e
}

// hint explains a transport failure in terms of the CLI's settings.
func (c *clientFlags) hint(st *status.Status) string {
	msg := st.Message()
	where := fmt.Sprintf("%s (%s)", c.addr, c.addrFrom)
	switch {
	case strings.Contains(msg, "connection refused"):
		return fmt.Sprintf("no Sigil server at %s: is `sigil server` running, and is this its gRPC address?", where)
	case strings.Contains(msg, "no such host"):
		return fmt.Sprintf("cannot resolve the host of %s", where)
	case strings.Contains(msg, "certificate signed by unknown authority") || strings.Contains(msg, "certificate is not trusted"):
		return fmt.Sprintf("the certificate of %s is not signed by a CA this CLI trusts: set SIGIL_CACERT (or --cacert) to the Sigil root, e.g. .sigil-dev/ca.pem, or pin it with `sigil ca bootstrap`", where)
	case strings.Contains(msg, "x509: certificate is valid for"):
		return fmt.Sprintf("the certificate of %s does not name that host: connect with a name it carries (see the message above)", where)
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Sprintf("%s does not speak TLS: that looks like the plain-HTTP port (CRLs, OCSP); SIGIL_ADDR must be the gRPC address (dev default %s)", where, defaultAddr)
	case strings.Contains(msg, "unexpected HTTP status code received from server") ||
		strings.Contains(msg, "received unexpected content-type") || strings.Contains(msg, "missing HTTP content-type"):
		return fmt.Sprintf("%s answered as a web server, not gRPC: that looks like the HTTPS port; SIGIL_ADDR must be the gRPC address (dev default %s)", where, defaultAddr)
	case st.Code() == codes.DeadlineExceeded && strings.Contains(msg, "connect"):
		return fmt.Sprintf("no answer from %s in time", where)
	case st.Code() == codes.Unavailable && strings.Contains(msg, "authentication handshake failed"):
		return fmt.Sprintf("the TLS handshake with %s failed", where)
	}
	return ""
}

// rpcError is a failed call as the CLI reports it. It keeps the gRPC status
// so callers can still branch on the code.
type rpcError struct {
	st        *status.Status
	requestID string
	hint      string
}

func (e *rpcError) GRPCStatus() *status.Status { return e.st }

func (e *rpcError) Error() string {
	var b strings.Builder
	if e.hint != "" {
		b.WriteString(e.hint)
		b.WriteString("\n  cause: ")
	}
	msg := e.st.Message()
	if msg == "" {
		msg = e.st.Code().String()
	}
	b.WriteString(msg)
	meta := []string{e.st.Code().String()}
	if e.requestID != "" && !strings.Contains(msg, e.requestID) {
		meta = append(meta, "request id "+e.requestID)
	}
	fmt.Fprintf(&b, " (%s)", strings.Join(meta, ", "))
	return b.String()
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// output prints v as JSON (--format json), one raw field of it (--field),
// or as text.
func (c *clientFlags) output(v any, text func(w io.Writer) error) error {
	w := c.env.stdout
	if c.field != "" {
		return printField(w, v, c.field)
	}
	if c.format == "json" {
		return printJSON(w, v)
	}
	return text(w)
}

// printField prints one field of v's JSON form: a name, a dotted path
// (data.password), or a name found under "data" or "public" as with
// Vault's -field. A list prints the field of each element, one a line.
func printField(w io.Writer, v any, name string) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return err
	}
	items := []any{doc}
	if list, ok := doc.([]any); ok {
		items = list
	}
	for _, it := range items {
		val, ok := lookupField(it, name)
		if !ok {
			return usagef("--field %s: no such field; fields: %s", name, strings.Join(fieldNames(it, ""), ", "))
		}
		switch x := val.(type) {
		case string:
			fmt.Fprint(w, x)
			if !strings.HasSuffix(x, "\n") {
				fmt.Fprintln(w)
			}
		case nil:
			fmt.Fprintln(w)
		case json.Number, bool:
			fmt.Fprintln(w, x)
		default:
			if err := json.NewEncoder(w).Encode(x); err != nil {
				return err
			}
		}
	}
	return nil
}

func lookupField(doc any, name string) (any, bool) {
	cur := doc
	for _, part := range strings.Split(name, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			if strings.Contains(name, ".") {
				return nil, false
			}
			for _, inner := range []string{"data", "public"} {
				if sub, ok := m[inner].(map[string]any); ok {
					if v, ok := sub[name]; ok {
						return v, true
					}
				}
			}
			return nil, false
		}
	}
	return cur, true
}

func fieldNames(doc any, prefix string) []string {
	m, ok := doc.(map[string]any)
	if !ok {
		return nil
	}
	var out []string
	for k, v := range m {
		if _, nested := v.(map[string]any); nested && prefix == "" {
			out = append(out, fieldNames(v, k+".")...)
			continue
		}
		out = append(out, prefix+k)
	}
	sort.Strings(out)
	return out
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
	if err := checkArgs(fs, minArgs, maxArgs); err != nil {
		return err
	}
	return withConn(ctx, cf, timeout, fn)
}

// checkArgs checks the number of positional arguments, naming what is
// missing from the usage line when it can.
func checkArgs(fs *flag.FlagSet, minArgs, maxArgs int) error {
	n := fs.NArg()
	switch {
	case n < minArgs:
		return usagef("%s: missing argument (takes %s, got %d)", fs.Name(), argCount(minArgs, maxArgs), n)
	case maxArgs >= 0 && n > maxArgs:
		if maxArgs == 0 {
			return usagef("%s takes no arguments, got %q", fs.Name(), fs.Args())
		}
		return usagef("%s: too many arguments (takes %s, got %q)", fs.Name(), argCount(minArgs, maxArgs), fs.Args())
	}
	return nil
}

func argCount(minArgs, maxArgs int) string {
	switch {
	case minArgs == maxArgs:
		return strconv.Itoa(minArgs)
	case maxArgs < 0:
		return fmt.Sprintf("at least %d", minArgs)
	}
	return fmt.Sprintf("%d to %d", minArgs, maxArgs)
}

// connCall is call for the usual case: exactly nargs arguments, 30 s.
func connCall(ctx context.Context, fs *flag.FlagSet, cf *clientFlags, args []string, nargs int, fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	return call(ctx, fs, cf, args, nargs, nargs, 30*time.Second, fn)
}
