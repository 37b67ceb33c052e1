package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// runCLI runs the CLI in-process with the given environment.
func runCLI(t *testing.T, envVars map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cliEnv{stdout: &out, stderr: &errb, stdin: strings.NewReader(""), getenv: func(k string) string { return envVars[k] }}
	code = run(context.Background(), env, args)
	return out.String(), errb.String(), code
}

// leafPaths lists every runnable command path of the tree.
func leafPaths(c *command, prefix []string) [][]string {
	var out [][]string
	for _, s := range c.sub {
		p := append(append([]string{}, prefix...), s.name)
		switch {
		case s.name == "help":
		case s.run != nil:
			out = append(out, p)
			// A runnable command may have subcommands too (agent).
			out = append(out, leafPaths(s, p)...)
		default:
			out = append(out, leafPaths(s, p)...)
		}
	}
	return out
}

// TestHelpShowsNoSecretAndOwnUsage runs --help on every command with secrets
// in the environment: none may appear, and each command's help starts with
// its own usage line (identity renew used to show ca issue's).
func TestHelpShowsNoSecretAndOwnUsage(t *testing.T) {
	secrets := map[string]string{
		"SIGIL_TOKEN":      "sgt_secret-token-value-1",
		"SIGIL_JOIN_TOKEN": "sgt_secret-join-token-2",
		"SIGIL_ADDR":       "127.0.0.1:1",
	}
	for _, p := range leafPaths(commands(), nil) {
		t.Run(strings.Join(p, " "), func(t *testing.T) {
			out, errOut, code := runCLI(t, secrets, append(p, "--help")...)
			if code != 0 {
				t.Fatalf("exit %d; stderr %q", code, errOut)
			}
			for name, v := range secrets {
				if name != "SIGIL_ADDR" && strings.Contains(out+errOut, v) {
					t.Errorf("help shows the value of %s:\n%s", name, out)
				}
			}
			if want := "Usage: sigil " + strings.Join(p, " "); !strings.HasPrefix(out, want) {
				t.Errorf("help starts %q, want %q", firstLine(out), want)
			}
			if errOut != "" {
				t.Errorf("help wrote to stderr: %q", errOut)
			}
		})
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func TestHelpCommandAndVersionFlag(t *testing.T) {
	direct, _, code := runCLI(t, nil, "ca", "sign", "--help")
	viaHelp, _, code2 := runCLI(t, nil, "help", "ca", "sign")
	if code != 0 || code2 != 0 || direct != viaHelp || !strings.HasPrefix(direct, "Usage: sigil ca sign") {
		t.Errorf("sigil help ca sign (exit %d) differs from ca sign --help (exit %d):\n%s\n---\n%s", code2, code, viaHelp, direct)
	}
	group, _, code := runCLI(t, nil, "help", "ca")
	if code != 0 || !strings.Contains(group, "bootstrap") || !strings.HasPrefix(group, "Usage: sigil ca COMMAND") {
		t.Errorf("sigil help ca: exit %d\n%s", code, group)
	}
	v1, _, c1 := runCLI(t, nil, "--version")
	v2, _, c2 := runCLI(t, nil, "version")
	if c1 != 0 || c2 != 0 || v1 != v2 || !strings.HasPrefix(v1, "sigil "+version) {
		t.Errorf("--version %q (exit %d), version %q (exit %d)", v1, c1, v2, c2)
	}
	f, _, _ := runCLI(t, nil, "version", "--field", "version")
	if f != version+"\n" {
		t.Errorf("version --field version = %q", f)
	}
}

func TestUsageErrorsOnceWithSuggestion(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"stauts"}, `did you mean "status"?`},
		{[]string{"ca", "rovoke"}, `did you mean "revoke"?`},
		{[]string{"tokn", "create"}, `did you mean "token"?`},
		{[]string{"ca", "revoke", "abc", "--reson", "1"}, "unknown flag --reson; did you mean --reason?"},
		{[]string{"creds", "db/ro", "--wrap-tll", "1m"}, "did you mean --wrap-ttl?"},
		{[]string{"ca", "revoke"}, "missing argument"},
		{[]string{"completion", "bsh"}, `did you mean "bash"?`},
		{[]string{"ca", "sign", "--csr", "x", "--ttl", "1ns"}, "--ttl 1ns: shorter than the minimum, 1m0s"},
		{[]string{"creds", "db/ro", "--wrap-ttl", "-1m"}, "--wrap-ttl -1m: must not be negative"},
		{[]string{"identity", "join-token", "create", "--spiffe-id", "spiffe://x/y", "--ttl", "2562047h"}, "--ttl 2562047h: longer than the maximum, 744h (31 days)"},
		{[]string{"token", "create", "--policy", "p", "--ttl", "9999999h"}, "--ttl 9999999h: too long: the maximum is 87600h"},
		{[]string{"lease", "renew", "x", "--increment", "2"}, "--increment 2: needs a unit"},
		{[]string{"ca", "list", "--expiring-within", "-1h"}, "must not be negative"},
		{[]string{"status", "--addr", "localhost"}, `--addr "localhost" has no port`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, errOut, code := runCLI(t, nil, tt.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, errOut)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("stderr %q lacks %q", errOut, tt.want)
			}
			if n := strings.Count(errOut, "error:"); n != 1 {
				t.Errorf("the error is printed %d times:\n%s", n, errOut)
			}
			if strings.Contains(errOut, "Connection and output flags") || strings.Contains(out, "Connection and output flags") {
				t.Errorf("a usage error dumped the flag list:\n%s%s", out, errOut)
			}
		})
	}
}

func TestNormalizeAddr(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{in: "127.0.0.1:8444", want: "127.0.0.1:8444"},
		{in: "https://ca.example.test:8444", want: "ca.example.test:8444"},
		{in: "https://[::1]:8444/", want: "[::1]:8444"},
		{in: "ca.example.test", err: "has no port"},
		{in: "https://ca.example.test", err: "has no port"},
		{in: "http://ca.example.test:8444", err: "needs TLS"},
		{in: "ftp://x:1", err: "not supported"},
		{in: "host:99999", err: "port"},
		{in: "https://h:1/api", err: "no path"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := normalizeAddr(tt.in, "SIGIL_ADDR")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("normalizeAddr(%q) = %q, %v; want error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("normalizeAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestTTLValue(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "24h", want: 24 * time.Hour},
		{in: "0", want: 0},
		{in: "1s", want: time.Second},
		{in: "999ms", err: "shorter than the minimum"},
		{in: "1ns", err: "shorter than the minimum"},
		{in: "-1h", err: "must not be negative"},
		{in: "87601h", err: "longer than the maximum"},
		{in: "2562048h", err: "too long"},
		{in: "30", err: "needs a unit"},
		{in: "forever", err: "not a duration"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var d time.Duration
			err := (&ttlValue{d: &d, min: minTTL, max: maxCertTTL}).Set(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Set(%q) = %v, %v; want error with %q", tt.in, d, err, tt.err)
				}
				return
			}
			if err != nil || d != tt.want {
				t.Fatalf("Set(%q) = %v, %v", tt.in, d, err)
			}
		})
	}
}

func TestCappedTTL(t *testing.T) {
	sent := time.Now()
	tests := []struct {
		name      string
		requested time.Duration
		expires   time.Time
		capped    bool
	}{
		{"granted in full", time.Hour, sent.Add(time.Hour + 2*time.Second), false},
		{"second rounding", time.Hour, sent.Add(time.Hour - time.Second), false},
		{"capped to 24h", 1000 * time.Hour, sent.Add(24 * time.Hour), true},
		{"no request", 0, sent.Add(24 * time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w bytes.Buffer
			view := map[string]any{}
			ttlReport(&w, view, "--ttl", tt.requested, sent, tt.expires.Unix())
			if got := view["ttl_capped"] == true; got != tt.capped {
				t.Errorf("ttl_capped %v, want %v (view %v)", view["ttl_capped"], tt.capped, view)
			}
			if tt.capped != strings.Contains(w.String(), "warning: --ttl") {
				t.Errorf("warning %q, capped %v", w.String(), tt.capped)
			}
			if tt.capped && view["ttl_seconds"] != int64(24*3600) {
				t.Errorf("ttl_seconds = %v, want the capped 86400", view["ttl_seconds"])
			}
		})
	}
}

func TestPrintField(t *testing.T) {
	creds := map[string]any{"lease_id": "db/ro/1", "lease_duration": 3600, "renewable": true,
		"data": map[string]string{"username": "u1", "password": "p@ss"}, "public": map[string]string{"public_key": "PEM\n"}}
	rows := []map[string]any{{"serial": "aa"}, {"serial": "bb"}}
	tests := []struct {
		v     any
		field string
		want  string
		err   string
	}{
		{creds, "password", "p@ss\n", ""},
		{creds, "data.username", "u1\n", ""},
		{creds, "lease_duration", "3600\n", ""},
		{creds, "renewable", "true\n", ""},
		{creds, "public_key", "PEM\n", ""},
		{rows, "serial", "aa\nbb\n", ""},
		{creds, "nope", "", "no such field; fields: data.password, data.username, lease_duration, lease_id"},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			var w bytes.Buffer
			err := printField(&w, tt.v, tt.field)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("printField %q: %v", tt.field, err)
				}
				return
			}
			if err != nil || w.String() != tt.want {
				t.Fatalf("printField %q = %q, %v; want %q", tt.field, w.String(), err, tt.want)
			}
		})
	}
}

func TestSuggest(t *testing.T) {
	cands := []string{"status", "server", "version", "token", "transit"}
	tests := map[string]string{"stauts": "status", "sever": "server", "vers": "version", "tokne": "token", "zzz": "", "x": ""}
	for in, want := range tests {
		if got := suggest(in, cands); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestComplete(t *testing.T) {
	tests := []struct {
		words []string
		want  []string
		not   []string
	}{
		{[]string{"st"}, []string{"status"}, []string{"server", "__complete"}},
		{[]string{"ca", ""}, []string{"bootstrap", "sign", "revoke"}, []string{"status"}},
		{[]string{"ca", "sign", "--p"}, []string{"--profile"}, []string{"--ttl"}},
		{[]string{"creds", "--"}, []string{"--wrap-ttl", "--format", "--field", "--token"}, nil},
		{[]string{"completion", ""}, []string{"bash", "zsh", "fish"}, nil},
		{[]string{"agent", ""}, []string{"entry", "render"}, nil},
		{[]string{"agent", "entry", ""}, []string{"create", "list", "delete"}, nil},
		{[]string{"agent", "entry", "create", "--s"}, []string{"--selector", "--spiffe-id"}, []string{"entry"}},
		{[]string{"agent", "--c"}, []string{"--cacert", "--config"}, []string{"entry"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.words, " "), func(t *testing.T) {
			out, errOut, code := runCLI(t, map[string]string{"SIGIL_TOKEN": "sgt_hidden"}, append([]string{"__complete"}, tt.words...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			got := strings.Fields(out)
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("candidates %q lack %q", got, w)
				}
			}
			for _, w := range tt.not {
				if slices.Contains(got, w) {
					t.Errorf("candidates %q include %q", got, w)
				}
			}
		})
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, _, code := runCLI(t, nil, "completion", sh)
		if code != 0 || !strings.Contains(out, "sigil __complete") {
			t.Errorf("completion %s: exit %d\n%s", sh, code, out)
		}
	}
}

// testTLS makes a CA and a server certificate for 127.0.0.1, and returns
// the CA file and the server's tls.Certificate.
func testTLS(t *testing.T) (caFile string, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// failingSys answers Status with an error carrying a request id in its
// header, as the server's interceptor does.
type failingSys struct {
	sigilv1.UnimplementedSysServiceServer
	inMessage bool
}

func (f failingSys) Status(ctx context.Context, _ *sigilv1.StatusRequest) (*sigilv1.StatusResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(requestIDKey, "req-7f3a"))
	if f.inMessage {
		return nil, status.Error(codes.Internal, "internal error (request id req-7f3a)")
	}
	return nil, status.Error(codes.Internal, "internal error")
}

// TestErrorsExplained checks the CLI's messages for failures of a real
// gRPC transport: the server's message with its request id once, and for
// connection problems the address, where it came from and the fix.
func TestErrorsExplained(t *testing.T) {
	caFile, cert := testTLS(t)
	serve := func(inMessage bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
		sigilv1.RegisterSysServiceServer(s, failingSys{inMessage: inMessage})
		go s.Serve(ln)
		t.Cleanup(s.Stop)
		return ln.Addr().String()
	}
	withID, idInMessage := serve(false), serve(true)
	web := httptest.NewUnstartedServer(http.NotFoundHandler())
	web.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	web.EnableHTTP2 = true
	web.StartTLS()
	t.Cleanup(web.Close)
	plain := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(plain.Close)
	closed := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()

	tests := []struct {
		name   string
		env    map[string]string
		args   []string
		want   []string
		absent string
	}{
		{name: "request id from the header", env: map[string]string{"SIGIL_ADDR": withID, "SIGIL_CACERT": caFile},
			want: []string{"error: internal error (Internal, request id req-7f3a)"}},
		{name: "request id already in the message", env: map[string]string{"SIGIL_ADDR": idInMessage, "SIGIL_CACERT": caFile},
			want: []string{"internal error (request id req-7f3a) (Internal)"}, absent: "Internal, request id"},
		{name: "https scheme accepted", env: map[string]string{"SIGIL_ADDR": "https://" + withID, "SIGIL_CACERT": caFile},
			want: []string{"request id req-7f3a"}},
		{name: "connection refused", env: map[string]string{"SIGIL_ADDR": closed, "SIGIL_CACERT": caFile},
			want: []string{"no Sigil server at " + closed + " (SIGIL_ADDR)"}},
		{name: "refused via --addr", env: map[string]string{"SIGIL_CACERT": caFile}, args: []string{"--addr", closed},
			want: []string{"no Sigil server at " + closed + " (--addr)"}},
		{name: "unknown authority", env: map[string]string{"SIGIL_ADDR": withID, "HOME": t.TempDir()},
			want: []string{"not signed by a CA this CLI trusts: set SIGIL_CACERT"}},
		{name: "the HTTPS port", env: map[string]string{"SIGIL_ADDR": web.Listener.Addr().String(), "SIGIL_CACERT": caFile},
			want: []string{"answered as a web server, not gRPC", "the HTTPS port"}},
		{name: "the plain-HTTP port", env: map[string]string{"SIGIL_ADDR": plain.Listener.Addr().String(), "SIGIL_CACERT": caFile},
			want: []string{"does not speak TLS", "plain-HTTP port"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := runCLI(t, tt.env, append([]string{"status"}, tt.args...)...)
			if code != 1 {
				t.Fatalf("exit %d, want 1: %s", code, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
			if tt.absent != "" && strings.Contains(errOut, tt.absent) {
				t.Errorf("stderr %q has %q", errOut, tt.absent)
			}
		})
	}
}
