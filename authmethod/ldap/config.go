// Package ldap is the LDAP auth method: it checks a username and password
// against a directory (search-then-bind with a service account, or a direct
// bind by DN template) and returns the user's groups, which the auth-method
// framework maps to policies. Configuration keys follow Vault's ldap auth
// method where they mean the same thing, so configurations carry over.
package ldap

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// ErrConfig is wrapped by every configuration error; the message names the
// key that was wrong.
var ErrConfig = errors.New("ldap: invalid configuration")

// Defaults. Vault's groupfilter, userattr and groupattr defaults are kept;
// the timeouts are shorter than Vault's (90 s / 30 s) so a dead server
// fails a login in seconds, not minutes.
const (
	DefaultUserAttr          = "cn"
	DefaultGroupAttr         = "cn"
	DefaultGroupFilter       = `(|(memberUid={{.Username}})(member={{.UserDN}})(uniqueMember={{.UserDN}}))`
	DefaultUserFilter        = `({{.UserAttr}}={{.Username}})`
	DefaultRequestTimeout    = 10 * time.Second
	DefaultConnectionTimeout = 5 * time.Second

	maxTimeout = 5 * time.Minute
)

// Keys lists every configuration key this method accepts, in the order they
// are shown.
var keys = []string{
	"url", "binddn", "bindpass", "userdn", "userattr", "userfilter", "upndomain",
	"discoverdn", "groupdn", "groupfilter", "groupattr", "starttls", "certificate",
	"insecure_tls", "deny_null_bind", "request_timeout", "connection_timeout",
}

// Keys returns the configuration keys the method accepts.
func Keys() []string { return slices.Clone(keys) }

// Config is a parsed, validated LDAP auth method configuration.
type Config struct {
	URLs              []*url.URL // tried in order
	BindDN            string
	BindPass          string
	UserDN            string
	UserAttr          string
	UserFilter        string
	UPNDomain         string
	DiscoverDN        bool
	GroupDN           string
	GroupFilter       string
	GroupAttr         string
	StartTLS          bool
	CertificatePEM    string
	RequestTimeout    time.Duration
	ConnectionTimeout time.Duration

	roots       *x509.CertPool // nil: system roots
	userFilter  *template.Template
	groupFilter *template.Template
}

// ParseConfig parses key=value settings (Vault's ldap keys). Unknown keys
// are refused, so a typo never silently weakens a configuration.
func ParseConfig(kv map[string]string) (*Config, error) {
	for k := range kv {
		if !slices.Contains(keys, k) {
			return nil, fmt.Errorf("%w: unknown key %q (known: %s)", ErrConfig, k, strings.Join(keys, ", "))
		}
	}
	c := &Config{
		BindDN:            kv["binddn"],
		BindPass:          kv["bindpass"],
		UserDN:            kv["userdn"],
		UserAttr:          orDefault(kv["userattr"], DefaultUserAttr),
		UserFilter:        orDefault(kv["userfilter"], DefaultUserFilter),
		UPNDomain:         kv["upndomain"],
		GroupDN:           kv["groupdn"],
		GroupFilter:       orDefault(kv["groupfilter"], DefaultGroupFilter),
		GroupAttr:         orDefault(kv["groupattr"], DefaultGroupAttr),
		CertificatePEM:    kv["certificate"],
		RequestTimeout:    DefaultRequestTimeout,
		ConnectionTimeout: DefaultConnectionTimeout,
	}
	var err error
	if c.StartTLS, err = parseBool(kv, "starttls", false); err != nil {
		return nil, err
	}
	if c.DiscoverDN, err = parseBool(kv, "discoverdn", false); err != nil {
		return nil, err
	}
	insecure, err := parseBool(kv, "insecure_tls", false)
	if err != nil {
		return nil, err
	}
	if insecure {
		return nil, fmt.Errorf("%w: insecure_tls=true is not supported: pin the server's CA with certificate=@ca.pem instead", ErrConfig)
	}
	denyNull, err := parseBool(kv, "deny_null_bind", true)
	if err != nil {
		return nil, err
	}
	if !denyNull {
		return nil, fmt.Errorf("%w: deny_null_bind=false is not supported: an empty password is always refused (it would be an unauthenticated bind)", ErrConfig)
	}
	if c.RequestTimeout, err = parseTimeout(kv, "request_timeout", DefaultRequestTimeout); err != nil {
		return nil, err
	}
	if c.ConnectionTimeout, err = parseTimeout(kv, "connection_timeout", DefaultConnectionTimeout); err != nil {
		return nil, err
	}

	rawURL := strings.TrimSpace(kv["url"])
	if rawURL == "" {
		return nil, fmt.Errorf("%w: url is required (ldaps://host:636 or ldap://host:389 with starttls=true)", ErrConfig)
	}
	for _, s := range strings.Split(rawURL, ",") {
		u, err := parseURL(strings.TrimSpace(s), c.StartTLS)
		if err != nil {
			return nil, err
		}
		c.URLs = append(c.URLs, u)
	}

	for _, dk := range []struct{ key, val string }{{"binddn", c.BindDN}, {"userdn", c.UserDN}, {"groupdn", c.GroupDN}} {
		if dk.val == "" {
			continue
		}
		if _, err := goldap.ParseDN(dk.val); err != nil {
			return nil, fmt.Errorf("%w: %s %q is not a DN: %v", ErrConfig, dk.key, dk.val, err)
		}
	}
	if (c.BindDN == "") != (c.BindPass == "") {
		return nil, fmt.Errorf("%w: binddn and bindpass go together (no anonymous or unauthenticated service bind)", ErrConfig)
	}
	if c.UserDN == "" {
		return nil, fmt.Errorf("%w: userdn is required (the base DN under which users are found)", ErrConfig)
	}
	if c.DiscoverDN && c.BindDN == "" {
		return nil, fmt.Errorf("%w: discoverdn needs binddn and bindpass (anonymous search is not supported)", ErrConfig)
	}
	if !validAttr(c.UserAttr) {
		return nil, fmt.Errorf("%w: userattr %q is not an attribute name", ErrConfig, c.UserAttr)
	}
	if !validAttr(c.GroupAttr) {
		return nil, fmt.Errorf("%w: groupattr %q is not an attribute name", ErrConfig, c.GroupAttr)
	}
	if c.UPNDomain != "" && (strings.ContainsAny(c.UPNDomain, "@ ,=\\") || len(c.UPNDomain) > 253) {
		return nil, fmt.Errorf("%w: upndomain %q is not a domain name", ErrConfig, c.UPNDomain)
	}
	if c.userFilter, err = parseFilterTemplate("userfilter", c.UserFilter, c.UserAttr); err != nil {
		return nil, err
	}
	if c.groupFilter, err = parseFilterTemplate("groupfilter", c.GroupFilter, c.UserAttr); err != nil {
		return nil, err
	}
	if c.CertificatePEM != "" {
		c.roots = x509.NewCertPool()
		if !c.roots.AppendCertsFromPEM([]byte(c.CertificatePEM)) {
			return nil, fmt.Errorf("%w: certificate holds no PEM certificate", ErrConfig)
		}
	}
	return c, nil
}

// Map returns the configuration as key=value settings for display. The
// bind password is never included.
func (c *Config) Map() map[string]string {
	us := make([]string, len(c.URLs))
	for i, u := range c.URLs {
		us[i] = u.String()
	}
	m := map[string]string{
		"url": strings.Join(us, ","), "binddn": c.BindDN, "userdn": c.UserDN,
		"userattr": c.UserAttr, "userfilter": c.UserFilter, "upndomain": c.UPNDomain,
		"discoverdn": strconv.FormatBool(c.DiscoverDN), "groupdn": c.GroupDN,
		"groupfilter": c.GroupFilter, "groupattr": c.GroupAttr,
		"starttls": strconv.FormatBool(c.StartTLS), "certificate": c.CertificatePEM,
		"insecure_tls": "false", "deny_null_bind": "true",
		"request_timeout": c.RequestTimeout.String(), "connection_timeout": c.ConnectionTimeout.String(),
	}
	if c.BindPass != "" {
		m["bindpass"] = "(set)"
	}
	return m
}

// Stored returns the configuration to store: every key with its default
// filled in, empty keys left out, the bind password included (the caller
// seals it).
func (c *Config) Stored() map[string]string {
	m := c.Map()
	delete(m, "bindpass")
	if c.BindPass != "" {
		m["bindpass"] = c.BindPass
	}
	for k, v := range m {
		if v == "" {
			delete(m, k)
		}
	}
	return m
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func parseBool(kv map[string]string, key string, def bool) (bool, error) {
	v, ok := kv[key]
	if !ok || v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: %s=%q is not true or false", ErrConfig, key, v)
	}
	return b, nil
}

// parseTimeout accepts whole seconds (Vault's form) or a Go duration.
func parseTimeout(kv map[string]string, key string, def time.Duration) (time.Duration, error) {
	v := kv[key]
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		if nerr != nil {
			return 0, fmt.Errorf("%w: %s=%q is not seconds or a duration like 10s", ErrConfig, key, v)
		}
		d = time.Duration(n) * time.Second
	}
	if d <= 0 || d > maxTimeout {
		return 0, fmt.Errorf("%w: %s=%q must be above 0 and at most %s", ErrConfig, key, v, maxTimeout)
	}
	return d, nil
}

// parseURL checks one server URL. Passwords cross the connection, so it
// must be ldaps:// or use StartTLS, except to a loopback address.
func parseURL(s string, startTLS bool) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w: url %q is not ldap://host[:port] or ldaps://host[:port]", ErrConfig, s)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: url %q must be only scheme://host[:port]", ErrConfig, s)
	}
	switch u.Scheme {
	case "ldaps":
		if startTLS {
			return nil, fmt.Errorf("%w: url %q is already ldaps://, starttls=true applies to ldap:// only", ErrConfig, s)
		}
	case "ldap":
		if !startTLS && !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("%w: url %q sends passwords in clear: use ldaps:// or starttls=true", ErrConfig, s)
		}
	default:
		return nil, fmt.Errorf("%w: url %q: scheme must be ldap or ldaps", ErrConfig, s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%w: url %q has a bad port", ErrConfig, s)
		}
	}
	return u, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validAttr accepts an attribute descriptor or a numeric OID, so it can be
// put in a filter without escaping.
func validAttr(a string) bool {
	if a == "" || len(a) > 128 {
		return false
	}
	for i, r := range a {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case (r >= '0' && r <= '9') || r == '-' || r == '.' || r == ';':
			if i == 0 && !(r >= '0' && r <= '9') {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// filterData is what a filter template sees. Every value is already
// escaped for a filter (RFC 4515), so a template cannot be tricked into
// another filter by a username.
type filterData struct {
	UserDN   string
	Username string
	UserAttr string
}

// parseFilterTemplate parses a Go template filter and checks that it
// renders to a valid LDAP filter.
func parseFilterTemplate(key, text, userAttr string) (*template.Template, error) {
	if len(text) > 4096 {
		return nil, fmt.Errorf("%w: %s is longer than 4096 bytes", ErrConfig, key)
	}
	t, err := template.New(key).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not a valid template (fields: {{.Username}} {{.UserDN}} {{.UserAttr}}): %v", ErrConfig, key, err)
	}
	f, err := renderFilter(t, filterData{UserDN: "uid=sample,dc=example", Username: "sample", UserAttr: userAttr})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, key, err)
	}
	if _, err := goldap.CompileFilter(f); err != nil {
		return nil, fmt.Errorf("%w: %s renders %q, which is not an LDAP filter: %v", ErrConfig, key, f, err)
	}
	return t, nil
}

func renderFilter(t *template.Template, d filterData) (string, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return "", fmt.Errorf("render filter: %w", err)
	}
	return b.String(), nil
}

// userFilterFor renders the user search filter for username.
func (c *Config) userFilterFor(username string) (string, error) {
	return renderFilter(c.userFilter, filterData{Username: goldap.EscapeFilter(username), UserAttr: c.UserAttr})
}

// groupFilterFor renders the group search filter for a user.
func (c *Config) groupFilterFor(username, userDN string) (string, error) {
	return renderFilter(c.groupFilter, filterData{
		Username: goldap.EscapeFilter(username), UserDN: goldap.EscapeFilter(userDN), UserAttr: c.UserAttr,
	})
}
