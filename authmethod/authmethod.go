// Package authmethod turns identities people and workloads already have
// (a JWT from Kubernetes or a CI pipeline, an OIDC login, an LDAP account)
// into a verified Identity that core exchanges for a Sigil token. Auth
// methods are mounted like engines: a mount has a type, a configuration
// with Vault's key names, roles and (for group-based methods) groups.
//
// The plug-in interface for a method type is small: a Type validates
// configurations and roles and builds a Method for a mount; a Method
// verifies credentials and returns an Identity. Optional abilities (the
// OIDC browser flow) are separate interfaces found by type assertion. The
// Manager owns storage (every record sealed by the barrier: configs hold
// secrets such as bindpass and client secrets), the common token settings
// (token_policies, token_ttl, token_max_ttl), the mapping of groups to
// policies and per-source rate limiting of failed logins. It knows no
// transport and issues no token: core does.
package authmethod

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/internal/errs"
)

// Type is a kind of auth method ("jwt", "oidc", "ldap"). Implementations
// must be safe for concurrent use.
type Type interface {
	// Name is the type as `sigil auth enable TYPE` names it.
	Name() string
	// CheckConfig validates a mount's configuration (keys as Vault's
	// method of the same kind names them; the common token_* keys are
	// removed first) and returns the stored form, defaults filled in.
	// Errors should be errs.InvalidArgument naming the key.
	CheckConfig(ctx context.Context, cfg map[string]string) (map[string]string, error)
	// CheckRole validates a role's type-specific fields (the common
	// token_* fields are removed first) against the mount's stored
	// configuration and returns the stored form. A role that would accept
	// any credential must be refused here.
	CheckRole(cfg, fields map[string]string) (map[string]string, error)
	// New builds the mount's Method from its stored configuration. It is
	// called again whenever the configuration changes.
	New(ctx context.Context, mount string, cfg map[string]string) (Method, error)
}

// Method is one configured mount of a Type.
type Method interface {
	// Login verifies creds and returns the identity they prove. role
	// loads a role of this mount by name (errs.NotFound if absent); a
	// method that has roles picks one (creds.Role, or the role an OIDC
	// state was started for) and returns it in Identity.Role. Failures
	// should be errs.PermissionDenied (bad credential) or
	// errs.InvalidArgument (malformed request), with a message that names
	// what was wrong but never echoes a secret.
	Login(ctx context.Context, creds Credentials, role RoleLoader) (*Identity, error)
	// Close releases what New opened (connection pools, refreshers).
	Close() error
}

// RoleLoader loads a role of the mount being logged in to.
type RoleLoader func(ctx context.Context, name string) (*Role, error)

// Redirector is the optional browser-flow ability of a Method (OIDC
// authorization code with PKCE). Login then receives the callback's state
// and code.
type Redirector interface {
	// AuthURL starts a login for role: it returns the provider's
	// authorization URL, which will send the browser to redirectURI.
	// clientNonce is the client's secret that must come back with the
	// callback, so only the client that started the flow can finish it.
	AuthURL(ctx context.Context, role *Role, redirectURI, clientNonce string) (string, error)
}

// Credentials is what a client presents to Login; each method reads the
// fields it knows.
type Credentials struct {
	Role string
	// JWT is a signed token (jwt method).
	JWT string
	// Username and Password (ldap method).
	Username, Password string
	// State, Code and ClientNonce finish a browser flow (oidc method).
	State, Code, ClientNonce string
}

// Identity is what a Method verified.
type Identity struct {
	// Name is who logged in, as the method names it (a JWT's user_claim,
	// an LDAP username). It is recorded on the token and in the audit log.
	Name string
	// Role is the role the login used; nil for a method without roles,
	// whose token settings then come from the mount's configuration.
	Role *Role
	// Metadata becomes {{identity.metadata.KEY}} in policy templates
	// (claim_mappings of a JWT role, for instance).
	Metadata map[string]string
	// Groups are mapped to policies by the mount's groups (sigil auth
	// group write MOUNT/GROUP token_policies=...).
	Groups []string
	// Policies are granted beyond the role's and the groups'.
	Policies []string
}

// Role is a stored role: the common token settings and the type's fields.
type Role struct {
	Name   string
	Token  TokenSettings
	Fields map[string]string
}

// TokenSettings are the common settings of the tokens a login issues.
type TokenSettings struct {
	Policies []string
	// TTL is the token's lifetime (0: MaxTTL); MaxTTL bounds it (0: the
	// server's tokens.max_ttl).
	TTL, MaxTTL time.Duration
}

// Common token keys, as Vault names them.
const (
	KeyTokenPolicies = "token_policies"
	KeyTokenTTL      = "token_ttl"
	KeyTokenMaxTTL   = "token_max_ttl"
)

// splitToken removes the common token keys from fields and parses them.
func splitToken(fields map[string]string) (TokenSettings, map[string]string, error) {
	var ts TokenSettings
	rest := make(map[string]string, len(fields))
	for k, v := range fields {
		rest[k] = v
	}
	if v, ok := rest[KeyTokenPolicies]; ok {
		delete(rest, KeyTokenPolicies)
		ts.Policies = SplitList(v)
		for _, p := range ts.Policies {
			if p == "root" {
				return ts, nil, errs.New(errs.InvalidArgument, "token_policies: an auth method may not grant the root policy")
			}
		}
	}
	var err error
	if ts.TTL, err = parseTTL(rest, KeyTokenTTL); err != nil {
		return ts, nil, err
	}
	if ts.MaxTTL, err = parseTTL(rest, KeyTokenMaxTTL); err != nil {
		return ts, nil, err
	}
	if ts.MaxTTL > 0 && ts.TTL > ts.MaxTTL {
		return ts, nil, errs.Errorf(errs.InvalidArgument, "token_ttl %s exceeds token_max_ttl %s", ts.TTL, ts.MaxTTL)
	}
	return ts, rest, nil
}

func parseTTL(m map[string]string, key string) (time.Duration, error) {
	v, ok := m[key]
	if !ok {
		return 0, nil
	}
	delete(m, key)
	d, err := ParseDuration(v)
	if err != nil || d < 0 {
		return 0, errs.Errorf(errs.InvalidArgument, "%s %q: want a duration such as 1h or 3600 (seconds)", key, v)
	}
	return d, nil
}

// maxDuration bounds a parsed duration (no overflow).
const maxDuration = time.Duration(math.MaxInt64)

// ParseDuration reads a duration as Vault does: Go syntax (90s, 1h) or a
// bare number of seconds.
func ParseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, nil
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs > int64(maxDuration/time.Second) {
			return 0, fmt.Errorf("%d seconds is too long", secs)
		}
		return time.Duration(secs) * time.Second, nil
	}
	return time.ParseDuration(v)
}

// SplitList splits a comma-separated list (a JSON array is accepted too),
// trimming blanks and dropping empty entries.
func SplitList(v string) []string {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
		v = strings.NewReplacer("[", "", "]", "", `"`, "").Replace(v)
	}
	var out []string
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// tokenFields renders token settings back into stored fields.
func tokenFields(ts TokenSettings, into map[string]string) {
	if len(ts.Policies) > 0 {
		into[KeyTokenPolicies] = strings.Join(ts.Policies, ",")
	}
	if ts.TTL > 0 {
		into[KeyTokenTTL] = ts.TTL.String()
	}
	if ts.MaxTTL > 0 {
		into[KeyTokenMaxTTL] = ts.MaxTTL.String()
	}
}
