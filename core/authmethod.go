package core

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/authmethod/jwt"
	"github.com/sigil-ca/sigil/authmethod/ldap"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/storage"
)

// authMethodTypes are the auth method types this server offers; a new
// type is one line here.
func authMethodTypes(log *slog.Logger) []authmethod.Type {
	return []authmethod.Type{jwt.NewType(jwt.KindJWT, log), jwt.NewType(jwt.KindOIDC, log), ldap.NewType(log)}
}

func newAuthMethods(st storage.Store, b authmethod.Sealer, failed config.RateLimit, log *slog.Logger) (*authmethod.Manager, error) {
	reg, err := authmethod.NewRegistry(authMethodTypes(log)...)
	if err != nil {
		return nil, err
	}
	rate, burst := failed.PerSecond, failed.Burst
	if rate == 0 {
		rate = authmethod.DefaultFailureRate
	}
	if burst == 0 {
		burst = authmethod.DefaultFailureBurst
	}
	return authmethod.NewManager(authmethod.Options{Settings: st.Settings(), Sealer: b, Registry: reg, Logger: log,
		Failures: authmethod.NewFailureLimiter(rate, burst)}), nil
}

// Token metadata written by a login. Identity metadata keys carry
// MetaIdentityPrefix; NewCaller hands them to policy templates as
// {{identity.metadata.KEY}}.
const (
	MetaAuthMount      = "auth_mount"
	MetaAuthRole       = "auth_role"
	MetaAuthName       = "auth_name"
	MetaIdentityPrefix = "identity.metadata."
)

// LoginResult is a login's token, delivered.
type LoginResult struct {
	Verified  *authmethod.Verified
	Info      *storage.Token
	LeaseID   string
	Delivery  *Delivery
	ExpiresAt time.Time
}

// Login verifies creds on an auth mount and issues a token carrying the
// role's (and groups') policies, sealed to ref. The lifetime is the role's
// token_ttl (default its token_max_ttl), never beyond token_max_ttl or
// the server's tokens.max_ttl; it is renewable up to that max (sigil token
// renew) and revoked with its lease. The
// recipient is resolved first: a token nobody can receive is never made.
func (c *Core) Login(ctx context.Context, source, mount string, creds authmethod.Credentials, ref *RecipientRef) (*LoginResult, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	to, err := c.Destination(ctx, ref, 0)
	if err != nil {
		return nil, err
	}
	v, err := u.AuthMethods.Login(ctx, source, mount, creds)
	if err != nil {
		return nil, err
	}
	return c.issueLoginToken(ctx, u, v, to)
}

// Callback finishes an OIDC browser login (state and code from the
// provider's redirect) and issues the token as Login does.
func (c *Core) Callback(ctx context.Context, source, mount string, creds authmethod.Credentials, ref *RecipientRef) (*LoginResult, error) {
	return c.Login(ctx, source, mount, creds, ref)
}

func (c *Core) issueLoginToken(ctx context.Context, u *Unsealed, v *authmethod.Verified, to To) (*LoginResult, error) {
	eng, err := u.Policies.Engine(ctx)
	if err != nil {
		return nil, internalErr("load policies", err)
	}
	for _, p := range v.Policies {
		if p == policy.RootPolicy {
			return nil, errs.New(errs.PermissionDenied, "an auth method may not grant the root policy")
		}
		if _, ok := eng.Policy(p); !ok {
			// Deny by default, but say why: the operator must write it.
			c.log.WarnContext(ctx, "login grants a policy that does not exist", "mount", v.Mount, "role", v.Role, "policy", p)
		}
	}
	maxTTL := c.TokenMaxTTL()
	if m := v.Token.MaxTTL; m > 0 && m < maxTTL {
		maxTTL = m
	}
	ttl := v.Token.TTL
	if ttl <= 0 || ttl > maxTTL {
		ttl = maxTTL
	}
	meta := map[string]string{MetaAuthMount: v.Mount, MetaAuthName: v.Identity.Name}
	if v.Role != "" {
		meta[MetaAuthRole] = v.Role
	}
	for k, val := range v.Identity.Metadata {
		meta[MetaIdentityPrefix+k] = val
	}
	owner := loginOwner(v.Mount, v.Identity.Name)
	tok, rec, err := u.Tokens.CreateLeased(ctx, u.Leases, auth.CreateOptions{Policies: v.Policies, TTL: ttl, MaxTTL: maxTTL, Meta: meta}, owner, owner)
	if err != nil {
		return nil, OpError("create token", err)
	}
	leaseID := auth.LeaseID(rec.ID)
	d, err := c.Deliver(ctx, to, Secret{BindingID: rec.ID, Data: map[string]string{"token": tok, "id": rec.ID}},
		func(ctx context.Context) error { return u.Leases.Revoke(ctx, leaseID) })
	if err != nil {
		return nil, err
	}
	return &LoginResult{Verified: v, Info: rec, LeaseID: leaseID, Delivery: d, ExpiresAt: rec.ExpiresAt}, nil
}

// AuthURL starts an OIDC browser login on mount for role.
func (c *Core) AuthURL(ctx context.Context, source, mount, role, redirectURI, clientNonce string) (string, error) {
	u, err := c.Unsealed()
	if err != nil {
		return "", err
	}
	return u.AuthMethods.AuthURL(ctx, source, mount, role, redirectURI, clientNonce)
}

// identityMetadata extracts the identity metadata a login wrote into a
// token's metadata.
func identityMetadata(meta map[string]string) map[string]string {
	var out map[string]string
	for k, v := range meta {
		if key, ok := strings.CutPrefix(k, MetaIdentityPrefix); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[key] = v
		}
	}
	return out
}

// loginOwner is the lease owner of a token issued by a login on mount.
func loginOwner(mount, name string) string { return "auth:" + mount + ":" + name }

// DisableAuth removes an auth mount with its roles and groups and revokes
// every token its logins issued, as Vault does: disabling a method ends
// the access it granted. It returns how many tokens were revoked.
func (c *Core) DisableAuth(ctx context.Context, mount string) (int, error) {
	u, err := c.Unsealed()
	if err != nil {
		return 0, err
	}
	if err := u.AuthMethods.Disable(ctx, mount); err != nil {
		return 0, err
	}
	owner := loginOwner(mount, "")
	n, after := 0, ""
	for {
		page, next, err := u.Leases.List(ctx, lease.ListOptions{Prefix: auth.LeaseMount + "/", After: after, Limit: 1000})
		if err != nil {
			return n, OpError("list token leases", err)
		}
		for _, l := range page {
			if !strings.HasPrefix(l.Owner, owner) {
				continue
			}
			if err := u.Leases.Revoke(ctx, l.ID); err != nil && !errors.Is(err, lease.ErrNotFound) {
				return n, OpError("revoke a token of the disabled auth mount", err)
			}
			n++
		}
		if next == "" {
			return n, nil
		}
		after = next
	}
}
