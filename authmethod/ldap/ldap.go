package ldap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	goldap "github.com/go-ldap/ldap/v3"
)

// Errors callers branch on. Each error returned by Login wraps one of them.
var (
	// ErrInvalidCredentials: unknown user, wrong password or a user the
	// directory will not authenticate. One error for all, so a caller
	// cannot tell which usernames exist.
	ErrInvalidCredentials = errors.New("ldap: invalid username or password")
	// ErrInvalidInput: the request is malformed (empty password, empty
	// or oversized username) and was refused before any network call.
	ErrInvalidInput = errors.New("ldap: invalid login request")
	// ErrUnavailable: no configured server could be reached or answered in
	// time, or the TLS handshake failed.
	ErrUnavailable = errors.New("ldap: server unavailable")
)

const (
	maxUsername = 256
	maxPassword = 1024
	poolSize    = 4
	// A pooled connection idle longer than this is closed rather than
	// re-used: servers and middleboxes drop idle connections silently.
	maxIdle = 30 * time.Second
)

// Result is an authenticated user.
type Result struct {
	Username string   // the user's userattr value as the directory spells it (case may differ from the login)
	DN       string   // the user's entry
	Groups   []string // group names (the groupattr value, or a DN's CN), sorted, unique
}

// Client authenticates users against the configured directory. It keeps a
// small pool of connections bound as the service account. It is safe for
// concurrent use; Close releases the pool.
type Client struct {
	cfg *Config
	log *slog.Logger

	mu     sync.Mutex
	idle   []*conn
	closed bool
}

// New returns a client for cfg. It does not connect until the first login.
func New(cfg *Config, log *slog.Logger) *Client {
	if log == nil {
		log = slog.Default()
	}
	return &Client{cfg: cfg, log: log.With("auth", "ldap")}
}

// Close closes pooled connections.
func (c *Client) Close() {
	c.mu.Lock()
	idle := c.idle
	c.idle, c.closed = nil, true
	c.mu.Unlock()
	for _, k := range idle {
		k.close()
	}
}

// conn is one LDAP connection. raw is the TCP connection under any TLS,
// whose deadline bounds every operation so nothing waits forever.
type conn struct {
	*goldap.Conn
	raw      net.Conn
	url      string
	asSvc    bool // last successful bind was the service account
	lastUsed time.Time
}

func (k *conn) close() { _ = k.Conn.Close() }

// Login checks username and password and returns the user's groups.
func (c *Client) Login(ctx context.Context, username, password string) (*Result, error) {
	if err := checkInput(username, password); err != nil {
		return nil, err
	}
	k, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	pooled := !k.lastUsed.IsZero()
	res, err := c.login(ctx, k, username, password)
	if pooled && errors.Is(err, ErrUnavailable) && ctx.Err() == nil {
		// A pooled connection that died while idle: one retry on a fresh one.
		k.close()
		if k, err = c.dial(ctx); err != nil {
			return nil, err
		}
		res, err = c.login(ctx, k, username, password)
	}
	c.put(k, err)
	return res, err
}

func checkInput(username, password string) error {
	switch {
	case password == "":
		return fmt.Errorf("%w: empty password (unauthenticated binds are refused)", ErrInvalidInput)
	case strings.TrimSpace(username) == "":
		return fmt.Errorf("%w: empty username", ErrInvalidInput)
	case strings.TrimSpace(username) != username:
		// The directory ignores such spaces when matching; refusing them
		// keeps one spelling per user for the policies mapped to it.
		return fmt.Errorf("%w: username has leading or trailing spaces", ErrInvalidInput)
	case len(username) > maxUsername:
		return fmt.Errorf("%w: username longer than %d bytes", ErrInvalidInput, maxUsername)
	case len(password) > maxPassword:
		return fmt.Errorf("%w: password longer than %d bytes", ErrInvalidInput, maxPassword)
	case !utf8.ValidString(username) || strings.ContainsRune(username, 0):
		return fmt.Errorf("%w: username is not valid UTF-8 text", ErrInvalidInput)
	}
	return nil
}

// login runs on k with a deadline on the raw connection covering the whole
// exchange, and closes it early if ctx ends.
func (c *Client) login(ctx context.Context, k *conn, username, password string) (*Result, error) {
	deadline := time.Now().Add(c.cfg.RequestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = k.raw.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, k.close)
	defer stop()
	res, err := c.authenticate(k, username, password)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, k.url, ctx.Err())
	}
	return res, err
}

func (c *Client) authenticate(k *conn, username, password string) (*Result, error) {
	cfg := c.cfg
	userDN, err := c.userBindDN(k, username)
	if err != nil {
		return nil, err
	}
	k.asSvc = false
	if err := k.Bind(userDN, password); err != nil {
		if goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
			c.log.Info("ldap login refused", "reason", "bind refused")
			return nil, ErrInvalidCredentials
		}
		return nil, c.opError(k, "user bind", err)
	}
	if cfg.UPNDomain != "" && !cfg.DiscoverDN && cfg.BindDN == "" {
		// Bound as user@domain: find the entry for the group search.
		if userDN, err = c.searchOne(k, fmt.Sprintf("(userPrincipalName=%s)", goldap.EscapeFilter(userDN))); err != nil {
			return nil, err
		}
	}
	// Groups are searched as the service account when there is one (the
	// user may not be allowed to read groups), else as the user.
	if cfg.BindDN != "" {
		if err := k.Bind(cfg.BindDN, cfg.BindPass); err != nil {
			return nil, c.opError(k, "service account bind", err)
		}
		k.asSvc = true
	}
	groups, err := c.groups(k, username, userDN)
	if err != nil {
		return nil, err
	}
	name, err := c.canonicalName(k, userDN, username)
	if err != nil {
		return nil, err
	}
	return &Result{Username: name, DN: userDN, Groups: groups}, nil
}

// userBindDN finds the DN to bind as: by search (service account), as a
// UPN, or from the DN template userattr=USERNAME,userdn.
func (c *Client) userBindDN(k *conn, username string) (string, error) {
	cfg := c.cfg
	switch {
	case cfg.BindDN != "":
		if !k.asSvc {
			if err := k.Bind(cfg.BindDN, cfg.BindPass); err != nil {
				return "", c.opError(k, "service account bind", err)
			}
			k.asSvc = true
		}
		f, err := cfg.userFilterFor(username)
		if err != nil {
			return "", fmt.Errorf("ldap: user filter: %w", err)
		}
		return c.searchOne(k, f)
	case cfg.UPNDomain != "":
		if strings.Contains(username, "@") {
			return "", ErrInvalidCredentials
		}
		return username + "@" + cfg.UPNDomain, nil
	default:
		return cfg.UserAttr + "=" + goldap.EscapeDN(username) + "," + cfg.UserDN, nil
	}
}

// canonicalName reads the user's userattr value from the entry, so "ALICE"
// and "alice" log in as the same name; without one it keeps the login name.
func (c *Client) canonicalName(k *conn, userDN, username string) (string, error) {
	req := goldap.NewSearchRequest(userDN, goldap.ScopeBaseObject, goldap.NeverDerefAliases,
		1, int(c.cfg.RequestTimeout/time.Second), false, "(objectClass=*)", []string{c.cfg.UserAttr}, nil)
	sr, err := k.Search(req)
	if err != nil {
		return "", c.opError(k, "user entry read", err)
	}
	if len(sr.Entries) == 1 {
		for _, v := range sr.Entries[0].GetEqualFoldAttributeValues(c.cfg.UserAttr) {
			if strings.EqualFold(v, username) {
				return v, nil
			}
		}
	}
	return username, nil
}

// searchOne returns the DN of the single entry under userdn that matches
// filter; none or several is a refused login.
func (c *Client) searchOne(k *conn, filter string) (string, error) {
	req := goldap.NewSearchRequest(c.cfg.UserDN, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
		2, int(c.cfg.RequestTimeout/time.Second), false, filter, []string{"1.1"}, nil)
	sr, err := k.Search(req)
	if err != nil && !goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
		return "", c.opError(k, "user search", err)
	}
	if sr == nil || len(sr.Entries) != 1 {
		n := 0
		if sr != nil {
			n = len(sr.Entries)
		}
		c.log.Info("ldap login refused", "reason", "user search did not find exactly one entry", "entries", n)
		return "", ErrInvalidCredentials
	}
	return sr.Entries[0].DN, nil
}

// groups returns the names of the user's groups: the groupattr values of
// the entries groupfilter finds under groupdn. A value that is a DN (as
// memberOf is) gives its CN.
func (c *Client) groups(k *conn, username, userDN string) ([]string, error) {
	cfg := c.cfg
	if cfg.GroupDN == "" {
		return nil, nil
	}
	f, err := cfg.groupFilterFor(username, userDN)
	if err != nil {
		return nil, fmt.Errorf("ldap: group filter: %w", err)
	}
	req := goldap.NewSearchRequest(cfg.GroupDN, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
		1000, int(cfg.RequestTimeout/time.Second), false, f, []string{cfg.GroupAttr}, nil)
	sr, err := k.Search(req)
	if err != nil {
		return nil, c.opError(k, "group search", err)
	}
	var out []string
	for _, e := range sr.Entries {
		for _, v := range e.GetEqualFoldAttributeValues(cfg.GroupAttr) {
			if name := groupName(v); name != "" {
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// groupName is the CN of a DN value, else the value itself (as Vault does).
func groupName(v string) string {
	if dn, err := goldap.ParseDN(v); err == nil && len(dn.RDNs) > 0 {
		for _, rdn := range dn.RDNs {
			for _, a := range rdn.Attributes {
				if strings.EqualFold(a.Type, "cn") {
					return a.Value
				}
			}
		}
	}
	return v
}

// opError classifies a failed operation: network trouble and server-side
// unavailability are ErrUnavailable; anything else is a refused login whose
// detail is logged, not returned.
func (c *Client) opError(k *conn, op string, err error) error {
	if isNetwork(err) || goldap.IsErrorAnyOf(err, goldap.LDAPResultBusy, goldap.LDAPResultUnavailable,
		goldap.LDAPResultTimeLimitExceeded, goldap.LDAPResultTimeout, goldap.LDAPResultServerDown) {
		return fmt.Errorf("%w: %s: %s: %w", ErrUnavailable, k.url, op, err)
	}
	c.log.Warn("ldap login refused", "op", op, "server", k.url, "err", err)
	return fmt.Errorf("%w (%s failed; see the server log)", ErrInvalidCredentials, op)
}

// isNetwork reports whether err is about the connection rather than an
// answer from the server. go-ldap reports some transport failures as plain
// errors ("unable to send request: ..."), so anything that is not an LDAP
// result counts as transport trouble.
func isNetwork(err error) bool {
	var le *goldap.Error
	if !errors.As(err, &le) {
		return true
	}
	return goldap.IsErrorAnyOf(err, goldap.ErrorNetwork, goldap.LDAPResultTimeout, goldap.LDAPResultServerDown) ||
		le.Err != nil && isTransport(le.Err)
}

func isTransport(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// get returns a pooled connection bound as the service account, or a new
// one.
func (c *Client) get(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	for len(c.idle) > 0 {
		k := c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		if k.IsClosing() || time.Since(k.lastUsed) > maxIdle {
			c.mu.Unlock()
			k.close()
			c.mu.Lock()
			continue
		}
		c.mu.Unlock()
		return k, nil
	}
	c.mu.Unlock()
	return c.dial(ctx)
}

// put returns k to the pool if it is healthy and bound as the service
// account; otherwise it closes it.
func (c *Client) put(k *conn, opErr error) {
	if (opErr != nil && !errors.Is(opErr, ErrInvalidCredentials)) || !k.asSvc || k.IsClosing() {
		k.close()
		return
	}
	if err := k.raw.SetDeadline(time.Time{}); err != nil {
		k.close()
		return
	}
	k.lastUsed = time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || len(c.idle) >= poolSize {
		k.close()
		return
	}
	c.idle = append(c.idle, k)
}

// dial connects to the first configured server that answers, in order.
func (c *Client) dial(ctx context.Context) (*conn, error) {
	var errs []error
	for _, u := range c.cfg.URLs {
		k, err := c.dialOne(ctx, u)
		if err == nil {
			return k, nil
		}
		c.log.Warn("ldap server unreachable", "server", u.String(), "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
}

func (c *Client) dialOne(ctx context.Context, u *url.URL) (*conn, error) {
	cfg := c.cfg
	host := u.Hostname()
	port := u.Port()
	if port == "" {
		port = "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.ConnectionTimeout)
	defer cancel()
	d := net.Dialer{}
	raw, err := d.DialContext(dctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{ServerName: host, RootCAs: cfg.roots, MinVersion: tls.VersionTLS12}
	var nc net.Conn = raw
	if u.Scheme == "ldaps" {
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tc
	}
	l := goldap.NewConn(nc, u.Scheme == "ldaps")
	l.Start()
	l.SetTimeout(cfg.RequestTimeout)
	k := &conn{Conn: l, raw: raw, url: u.String()}
	if cfg.StartTLS {
		// The StartTLS handshake has no timeout of its own: bound it with
		// the raw connection's deadline.
		dl, _ := dctx.Deadline()
		_ = raw.SetDeadline(dl)
		if err := l.StartTLS(tlsCfg); err != nil {
			k.close()
			return nil, fmt.Errorf("StartTLS: %w", err)
		}
	}
	return k, nil
}
