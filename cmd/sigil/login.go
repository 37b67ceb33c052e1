package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/term"
	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/internal/atomicfile"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// The token file is where `sigil login` leaves the token and where every
// command looks when SIGIL_TOKEN is unset, like Vault's token helper:
// SIGIL_TOKEN_FILE, else $XDG_CONFIG_HOME/sigil/token (~/.config/sigil/token).
func tokenFilePath(env *cliEnv) string {
	if p := env.getenv("SIGIL_TOKEN_FILE"); p != "" {
		return p
	}
	root := defaultCACertPath(env)
	if root == "" {
		return ""
	}
	return filepath.Join(filepath.Dir(root), "token")
}

// maxTokenFile bounds what is read from the token file.
const maxTokenFile = 4 << 10

// storedToken returns the token `sigil login` stored, or "". A file others
// can read is ignored with a warning: the token may have leaked.
func storedToken(env *cliEnv) string {
	p := tokenFilePath(env)
	if p == "" {
		return ""
	}
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(env.stderr, "warning: ignoring token file %s: it must be readable by its owner only (chmod 600)\n", p)
		return ""
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// readSecretArg reads a value given as @FILE, - (stdin) or literally.
func readSecretArg(env *cliEnv, name, v string) (string, error) {
	var r io.Reader
	switch {
	case v == "-":
		r = env.stdin
	case strings.HasPrefix(v, "@"):
		f, err := os.Open(v[1:])
		if err != nil {
			return "", fmt.Errorf("--%s: %w", name, err)
		}
		defer f.Close()
		r = f
	default:
		return strings.TrimSpace(v), nil
	}
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return "", fmt.Errorf("--%s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func runLogin(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "login", "sigil login --method jwt|oidc|ldap [--mount NAME] [--role ROLE] [--jwt @FILE|-|TOKEN] [--username U --password-file F]")
	cf.register(fs, env)
	method := fs.String("method", "", "auth method type: jwt, oidc or ldap")
	mount := fs.String("mount", "", "auth mount (default: the method)")
	role := fs.String("role", "", "role to log in to (default: the mount's default_role)")
	jwtArg := fs.String("jwt", "", "the JWT: @FILE, - for stdin, or the token itself")
	username := fs.String("username", "", "ldap: user name")
	passwordFile := fs.String("password-file", "", "ldap: file holding the password (default: prompt on stdin)")
	listen := fs.String("listen", "127.0.0.1:8250", "oidc: local address of the browser callback")
	noStore := fs.Bool("no-store", false, "print the token without storing it in the token file")
	timeout := fs.Duration("timeout", 5*time.Minute, "oidc: how long to wait for the browser login")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkArgs(fs, 0, 0); err != nil {
		return err
	}
	if *mount == "" {
		*mount = *method
	}
	k, err := newOneCallKey()
	if err != nil {
		return err
	}
	var resp *sigilv1.AuthLoginResponse
	wait := 30 * time.Second
	if *method == "oidc" {
		wait = *timeout + 30*time.Second
	}
	err = withConn(ctx, &cf, wait, func(ctx context.Context, conn *grpc.ClientConn) error {
		c := sigilv1.NewAuthMethodServiceClient(conn)
		var err error
		switch *method {
		case "jwt":
			if *jwtArg == "" {
				return usagef("--jwt is required with --method jwt (@FILE, - for stdin)")
			}
			tok, err := readSecretArg(env, "jwt", *jwtArg)
			if err != nil {
				return err
			}
			resp, err = c.Login(ctx, jwtLoginRequest(*mount, *role, tok, k))
			return err
		case "ldap":
			if *username == "" {
				return usagef("--username is required with --method ldap")
			}
			pw, err := readPassword(env, *passwordFile)
			if err != nil {
				return err
			}
			resp, err = c.Login(ctx, &sigilv1.AuthLoginRequest{Mount: *mount, Role: *role, Username: *username, Password: pw, Recipient: k.Recipient})
			return err
		case "oidc":
			resp, err = oidcLogin(ctx, env, c, *mount, *role, *listen, *timeout, k)
			return err
		case "":
			return usagef("--method is required: jwt, oidc or ldap")
		}
		return usagef("--method %q: want jwt, oidc or ldap", *method)
	})
	if err != nil {
		return err
	}
	token, err := openLoginToken(k, resp)
	if err != nil {
		return err
	}
	stored := ""
	if !*noStore {
		p := tokenFilePath(env)
		if p == "" {
			return errors.New("no place for the token file: set SIGIL_TOKEN_FILE or HOME (or pass --no-store)")
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("token file: %w", err)
		}
		if err := atomicfile.Write(p, []byte(token+"\n"), 0o600); err != nil {
			return fmt.Errorf("token file: %w", err)
		}
		stored = p
	}
	exp := time.Unix(resp.GetExpiresAtUnix(), 0).UTC()
	out := map[string]any{"token": token, "token_id": resp.GetTokenId(), "policies": resp.GetPolicies(),
		"expires_at": exp.Format(time.RFC3339), "identity": resp.GetIdentity(), "metadata": resp.GetMetadata(),
		"lease_id": resp.GetLeaseId()}
	if stored != "" {
		out["token_file"] = stored
	}
	return cf.output(out, func(w io.Writer) error {
		fmt.Fprintf(w, "token       %s\nidentity    %s\npolicies    %s\nexpires_at  %s\n", token, resp.GetIdentity(),
			strings.Join(resp.GetPolicies(), ", "), exp.Format(time.RFC3339))
		if stored != "" {
			fmt.Fprintf(w, "stored in   %s (used by the next sigil commands when SIGIL_TOKEN is unset)\n", stored)
		}
		return nil
	})
}

// jwtLoginRequest is a JWT login whose token is sealed to k (shared by
// `sigil login` and the --login-jwt token source of exec and render).
func jwtLoginRequest(mount, role, jwt string, k *oneCallKey) *sigilv1.AuthLoginRequest {
	return &sigilv1.AuthLoginRequest{Mount: mount, Role: role, Jwt: jwt, Recipient: k.Recipient}
}

// openLoginToken opens the token a login sealed to k.
func openLoginToken(k *oneCallKey, resp *sigilv1.AuthLoginResponse) (string, error) {
	data, err := k.open(resp.GetEnvelope(), resp.GetTokenId(), "token")
	if err != nil {
		return "", err
	}
	if data["token"] == "" {
		return "", errors.New("the server sent a login response without a token")
	}
	return data["token"], nil
}

// readPassword reads the LDAP password from a file or stdin (one line).
func readPassword(env *cliEnv, file string) (string, error) {
	var r io.Reader = env.stdin
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("--password-file: %w", err)
		}
		defer f.Close()
		r = f
	} else {
		// At a terminal, read without echo (the password must not stay on
		// the screen or in the scrollback).
		if f, ok := env.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			pw, err := readLineNoEcho(f, "Password: ", env.stderr)
			if err != nil {
				return "", fmt.Errorf("read password: %w", err)
			}
			return pw, nil
		}
		fmt.Fprint(env.stderr, "Password: ")
	}
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return "", err
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimRight(pw, "\r"), nil
}

// oidcLogin runs the browser flow: a local callback listener, the
// provider's URL printed for the user, then the code and state handed to
// Sigil, which exchanges them (with its PKCE verifier) and issues the
// token. The client nonce ties the callback to this process.
func oidcLogin(ctx context.Context, env *cliEnv, c sigilv1.AuthMethodServiceClient, mount, role, listen string,
	timeout time.Duration, k *oneCallKey) (*sigilv1.AuthLoginResponse, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", listen, err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	redirect := "http://localhost:" + port + "/oidc/callback"
	nb := make([]byte, 24)
	if _, err := rand.Read(nb); err != nil {
		return nil, err
	}
	nonce := base64.RawURLEncoding.EncodeToString(nb)
	u, err := c.AuthURL(ctx, &sigilv1.AuthURLRequest{Mount: mount, Role: role, RedirectUri: redirect, ClientNonce: nonce})
	if err != nil {
		return nil, err
	}
	type result struct{ state, code, err string }
	got := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/oidc/callback" {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		res := result{state: q.Get("state"), code: q.Get("code"), err: q.Get("error")}
		if d := q.Get("error_description"); d != "" {
			res.err += ": " + d
		}
		select {
		case got <- res:
		default:
		}
		fmt.Fprintln(w, "Sigil login received: you can close this window and return to the terminal.")
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	fmt.Fprintf(env.stderr, "Complete the login in your browser:\n\n  %s\n\nWaiting for the callback on %s ...\n", u.GetAuthUrl(), redirect)
	var res result
	select {
	case res = <-got:
	case <-time.After(timeout):
		return nil, fmt.Errorf("no browser callback within %s", timeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if res.err != "" {
		return nil, fmt.Errorf("the provider refused the login: %s", res.err)
	}
	return c.Callback(ctx, &sigilv1.AuthCallbackRequest{Mount: mount, State: res.state, Code: res.code, ClientNonce: nonce, Recipient: k.Recipient})
}
