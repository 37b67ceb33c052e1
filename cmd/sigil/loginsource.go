package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// loginFlags are --login-jwt, --login-mount and --login-role: a command
// that runs for a while (sigil exec, sigil agent render) logs in with a
// JWT read from a file, such as a Kubernetes pod's projected
// service-account token, instead of holding a stored Sigil token.
type loginFlags struct {
	jwtFile, mount, role string
}

func (l *loginFlags) register(fs *flag.FlagSet, env *cliEnv) {
	fs.StringVar(&l.jwtFile, "login-jwt", env.getenv("SIGIL_LOGIN_JWT_FILE"),
		"log in with the JWT in this `FILE` (e.g. a projected Kubernetes service-account token, /var/run/secrets/sigil/token) instead of --token; the token is kept in memory, renewed, and the file re-read for each new login (env SIGIL_LOGIN_JWT_FILE)")
	fs.StringVar(&l.mount, "login-mount", env.getenv("SIGIL_LOGIN_MOUNT"), "auth mount of --login-jwt (env SIGIL_LOGIN_MOUNT; default jwt)")
	fs.StringVar(&l.role, "login-role", env.getenv("SIGIL_LOGIN_ROLE"), "role of --login-jwt (env SIGIL_LOGIN_ROLE; default: the mount's default_role)")
}

// apply checks the flags and, with --login-jwt, sets cf to log in instead
// of using a token: the returned source must be started on the
// connection cf dials. nil when --login-jwt is not given.
func (l *loginFlags) apply(cf *clientFlags, log *slog.Logger) (*loginSource, error) {
	if l.jwtFile == "" {
		if l.mount != "" || l.role != "" {
			return nil, usagef("--login-mount and --login-role go with --login-jwt FILE")
		}
		return nil, nil
	}
	if cf.clientCert != "" {
		return nil, usagef("--login-jwt and --client-cert are two identities: give one")
	}
	if l.mount == "" {
		l.mount = "jwt"
	}
	src := &loginSource{jwtFile: l.jwtFile, mount: l.mount, role: l.role, log: log, changed: make(chan struct{})}
	// The login's token replaces any other: a token from SIGIL_TOKEN or the
	// token file would otherwise ride along.
	cf.token = ""
	cf.perRPC = src
	return src, nil
}

// dialWithLogin dials cf and, with --login-jwt, logs in before returning
// and keeps the token current until done is called.
func dialWithLogin(ctx context.Context, cf *clientFlags, lf *loginFlags, log *slog.Logger) (*grpc.ClientConn, context.Context, func(), error) {
	src, err := lf.apply(cf, log)
	if err != nil {
		return nil, nil, nil, err
	}
	conn, err := cf.dial()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := func() { cancel(); conn.Close() }
	if src != nil {
		if err := src.Start(ctx, conn); err != nil {
			done()
			return nil, nil, nil, err
		}
	}
	return conn, ctx, done, nil
}

// loginSource logs in with a JWT file and keeps the Sigil token current:
// renewed before it expires while the server allows, and replaced by a
// new login (re-reading the file: projected tokens rotate) when renewal
// is refused or the max TTL nears. The token lives in memory only. It is
// the connection's per-call credentials, so every call carries the
// current token.
type loginSource struct {
	jwtFile, mount, role string
	log                  *slog.Logger
	auth                 sigilv1.AuthMethodServiceClient
	tokens               sigilv1.TokenServiceClient

	mu                      sync.Mutex
	token                   string
	issued, expires, maxExp time.Time
	ttl                     time.Duration
	// changed is closed (and replaced) whenever the token changes, to wake
	// calls waiting for a valid token.
	changed chan struct{}
}

// Login backoff bounds: retried quickly at first, then every 30s.
const (
	loginBackoffMin = time.Second
	loginBackoffMax = 30 * time.Second
	// maxJWTFile bounds what is read from the JWT file (the server refuses
	// oversized tokens anyway).
	maxJWTFile = 64 << 10
)

// selfToken marks the source's own calls (renewals): they carry the token
// they name and never wait for a new one.
type selfToken struct{}

var _ credentials.PerRPCCredentials = (*loginSource)(nil)

// GetRequestMetadata implements credentials.PerRPCCredentials. A login
// goes out without a token; any other call waits (within its deadline)
// for a token that has not expired.
func (s *loginSource) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if tok, ok := ctx.Value(selfToken{}).(string); ok {
		return map[string]string{"authorization": "Bearer " + tok}, nil
	}
	if ri, ok := credentials.RequestInfoFromContext(ctx); ok && ri.Method == sigilv1.AuthMethodService_Login_FullMethodName {
		return nil, nil
	}
	for {
		s.mu.Lock()
		tok, exp, changed := s.token, s.expires, s.changed
		s.mu.Unlock()
		if tok != "" && time.Now().Before(exp) {
			return map[string]string{"authorization": "Bearer " + tok}, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, status.Error(codes.Unavailable, "no valid Sigil token yet: the login with --login-jwt has not succeeded (see the log)")
		}
	}
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (*loginSource) RequireTransportSecurity() bool { return true }

// Start logs in once over conn, retrying only while the server is
// unreachable (a refusal is the configuration's fault and is returned),
// then keeps the token current in the background until ctx ends.
func (s *loginSource) Start(ctx context.Context, conn grpc.ClientConnInterface) error {
	s.auth = sigilv1.NewAuthMethodServiceClient(conn)
	s.tokens = sigilv1.NewTokenServiceClient(conn)
	backoff := loginBackoffMin
	for {
		err := s.login(ctx)
		if err == nil {
			break
		}
		if !loginTransient(err) || ctx.Err() != nil {
			return fmt.Errorf("login with --login-jwt %s on mount %s: %w", s.jwtFile, s.mount, err)
		}
		s.log.Warn("login failed; retrying", "mount", s.mount, "role", s.role, "err", err, "retry_in", backoff)
		if !sleepCtx(ctx, backoff) {
			return ctx.Err()
		}
		backoff = min(2*backoff, loginBackoffMax)
	}
	go s.keep(ctx)
	return nil
}

// loginTransient reports whether a login error may go away by itself.
func loginTransient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal:
		return true
	}
	return false
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// readJWT reads the JWT file afresh: a projected token is rotated in
// place by the kubelet.
func (s *loginSource) readJWT() (string, error) {
	f, err := os.Open(s.jwtFile)
	if err != nil {
		return "", fmt.Errorf("--login-jwt: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJWTFile+1))
	if err != nil {
		return "", fmt.Errorf("--login-jwt %s: %w", s.jwtFile, err)
	}
	if len(b) > maxJWTFile {
		return "", fmt.Errorf("--login-jwt %s: larger than %d bytes: not a JWT", s.jwtFile, maxJWTFile)
	}
	jwt := strings.TrimSpace(string(b))
	if jwt == "" {
		return "", fmt.Errorf("--login-jwt %s is empty", s.jwtFile)
	}
	return jwt, nil
}

// login logs in with the file's JWT and installs the new token. Errors
// never carry the JWT: the server's messages name claims, not values.
func (s *loginSource) login(ctx context.Context) error {
	jwt, err := s.readJWT()
	if err != nil {
		return err
	}
	k, err := newOneCallKey()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := s.auth.Login(cctx, jwtLoginRequest(s.mount, s.role, jwt, k))
	if err != nil {
		return err
	}
	tok, err := openLoginToken(k, resp)
	if err != nil {
		return err
	}
	now := time.Now()
	exp := time.Unix(resp.GetExpiresAtUnix(), 0)
	s.mu.Lock()
	s.token, s.issued, s.expires, s.maxExp, s.ttl = tok, now, exp, time.Time{}, exp.Sub(now)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("logged in", "mount", s.mount, "role", s.role, "identity", resp.GetIdentity(), "token_id", resp.GetTokenId(),
		"policies", strings.Join(resp.GetPolicies(), ","), "expires_at", exp.UTC().Format(time.RFC3339))
	return nil
}

// keep renews the token when two thirds of its remaining life have gone,
// and logs in again when renewal is refused, cannot extend it, or would
// leave less than half its TTL before the max. A failed login is retried
// with backoff until one succeeds or ctx ends.
func (s *loginSource) keep(ctx context.Context) {
	backoff := loginBackoffMin
	for {
		s.mu.Lock()
		tok, exp, maxExp, ttl := s.token, s.expires, s.maxExp, s.ttl
		s.mu.Unlock()
		if !sleepCtx(ctx, max(time.Until(exp)*2/3, 0)) {
			return
		}
		relogin := time.Now().After(exp) || (!maxExp.IsZero() && maxExp.Sub(exp) < ttl/2)
		if !relogin {
			err := s.renew(ctx, tok, exp)
			switch {
			case err == nil:
				backoff = loginBackoffMin
				continue
			case loginTransient(err) && time.Until(exp) > 2*time.Second:
				s.log.Warn("token renewal failed; retrying", "err", err, "retry_in", backoff)
				if !sleepCtx(ctx, backoff) {
					return
				}
				backoff = min(2*backoff, loginBackoffMax)
				continue
			}
			s.log.Info("token not renewed; logging in again", "reason", err)
		}
		for {
			err := s.login(ctx)
			if err == nil {
				backoff = loginBackoffMin
				break
			}
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("login failed; retrying", "mount", s.mount, "role", s.role, "err", err, "retry_in", backoff)
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, loginBackoffMax)
		}
	}
}

// errNotExtended is a renewal that left the expiry where it was.
var errNotExtended = errors.New("the renewal did not extend the token (at its max TTL)")

// renew renews tok (the caller's own token) by its original TTL.
func (s *loginSource) renew(ctx context.Context, tok string, oldExp time.Time) error {
	cctx, cancel := context.WithTimeout(context.WithValue(ctx, selfToken{}, tok), 30*time.Second)
	defer cancel()
	resp, err := s.tokens.Renew(cctx, &sigilv1.RenewTokenRequest{})
	if err != nil {
		return err
	}
	exp := time.Unix(resp.GetInfo().GetExpiresAtUnix(), 0)
	if !exp.After(oldExp) {
		return errNotExtended
	}
	s.mu.Lock()
	if s.token == tok {
		s.expires, s.maxExp = exp, time.Unix(resp.GetMaxExpiresAtUnix(), 0)
		close(s.changed)
		s.changed = make(chan struct{})
	}
	s.mu.Unlock()
	s.log.Debug("token renewed", "expires_at", exp.UTC().Format(time.RFC3339))
	return nil
}
