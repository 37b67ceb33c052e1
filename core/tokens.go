package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/storage"
)

// TokenMaxTTL is the longest lifetime a new token (or wrapping token) may
// have.
func (c *Core) TokenMaxTTL() time.Duration {
	if d := time.Duration(c.opts.Config.Tokens.MaxTTL); d > 0 {
		return d
	}
	return config.DefaultTokenMaxTTL
}

// TokenRequest asks for a new API token; both lifetimes are bounded by
// TokenMaxTTL.
type TokenRequest struct {
	Policies                   []string
	TTLSeconds, WrapTTLSeconds int64
	// MaxTTLSeconds, when above TTLSeconds, makes the token renewable up
	// to that long after its creation (sigil token renew).
	MaxTTLSeconds int64
	Uses          int
	Recipient     *RecipientRef
}

// NewToken is a created token: its record, its delivery and what the
// server changed from the request.
type NewToken struct {
	Info     *storage.Token
	Delivery *Delivery
	// Warnings say why the expiry or uses differ from what was asked.
	Warnings []string
}

// CreateToken makes an API token bounded by its creator (see delegate) and
// delivers it to the recipient, or wraps it. The recipient is resolved
// first: a token nobody can receive is never made.
func (c *Core) CreateToken(ctx context.Context, caller *Caller, req TokenRequest) (*NewToken, error) {
	if len(req.Policies) == 0 {
		return nil, invalid("a token needs at least one policy (deny by default)")
	}
	for _, p := range req.Policies {
		if err := policy.ValidName(p); err != nil && p != policy.RootPolicy {
			return nil, invalid(err.Error())
		}
	}
	maxTTL := c.TokenMaxTTL()
	ttl, err := Seconds("ttl_seconds", req.TTLSeconds, maxTTL, "tokens.max_ttl")
	if err != nil {
		return nil, err
	}
	wrapTTL, err := Seconds("wrap_ttl_seconds", req.WrapTTLSeconds, maxTTL, "tokens.max_ttl")
	if err != nil {
		return nil, err
	}
	renewMax, err := Seconds("max_ttl_seconds", req.MaxTTLSeconds, maxTTL, "tokens.max_ttl")
	if err != nil {
		return nil, err
	}
	if renewMax > 0 && (ttl == 0 || renewMax < ttl) {
		return nil, invalid(fmt.Sprintf("max_ttl_seconds %d needs a ttl_seconds at or below it (got %d): a renewable token starts with its ttl and renews up to its max", req.MaxTTLSeconds, req.TTLSeconds))
	}
	if req.Uses < 0 {
		return nil, invalid("uses must not be negative")
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	opts, warnings, err := c.delegate(ctx, u, caller, req.Policies, ttl, req.Uses)
	if err != nil {
		return nil, err
	}
	if renewMax > opts.TTL {
		// A renewable child never outlives its creator as it is now: the
		// max is capped like the TTL.
		if exp := caller.Identity.ExpiresAt; !exp.IsZero() {
			if left := time.Until(exp).Truncate(time.Second); renewMax > left {
				renewMax = left
				warnings = append(warnings, fmt.Sprintf("max_ttl capped to %s: the creating credential expires at %s", left, exp.UTC().Format(time.RFC3339)))
			}
		}
		opts.MaxTTL = renewMax
	}
	to, err := c.Destination(ctx, req.Recipient, wrapTTL)
	if err != nil {
		return nil, err
	}
	tok, rec, err := u.Tokens.CreateLeased(ctx, u.Leases, opts, caller.Name(), caller.Owner())
	if err != nil {
		return nil, OpError("create token", err)
	}
	leaseID := auth.LeaseID(rec.ID)
	caller.addLease(leaseID)
	// A sealed token is bound to its id; a wrapped one to its lease.
	bind := rec.ID
	if to.Wrapped() {
		bind = leaseID
	}
	d, err := c.Deliver(ctx, to, Secret{BindingID: bind, Data: map[string]string{"token": tok, "id": rec.ID}},
		func(ctx context.Context) error { return u.Leases.Revoke(ctx, leaseID) })
	if err != nil {
		return nil, err
	}
	return &NewToken{Info: rec, Delivery: d, Warnings: warnings}, nil
}

// delegate bounds a new token by its creator. Token creation delegates,
// never escalates: a creator grants only policies it holds itself; only a
// root caller, or one granted create (with sudo) on sys/tokens/root, grants
// root; every granted policy must exist; the child expires no later than
// its creator and has no more uses left than its creator. A TTL or use
// count above the creator's is capped, and each cap is reported in the
// returned warnings.
func (c *Core) delegate(ctx context.Context, u *Unsealed, caller *Caller, policies []string, ttl time.Duration, uses int) (auth.CreateOptions, []string, error) {
	if caller == nil || caller.Policies == nil || caller.Identity == nil {
		return auth.CreateOptions{}, nil, errs.New(errs.PermissionDenied, "permission denied: unauthenticated token creation")
	}
	eng, err := u.Policies.Engine(ctx)
	if err != nil {
		return auth.CreateOptions{}, nil, internalErr("load policies", err)
	}
	for _, p := range policies {
		if _, ok := eng.Policy(p); !ok && p != policy.RootPolicy {
			return auth.CreateOptions{}, nil, invalid(fmt.Sprintf("policy %q does not exist: write it first (sigil policy write %s FILE)", p, p))
		}
	}
	if slices.Contains(policies, policy.RootPolicy) {
		if err := caller.Authorize("sys/tokens/root", policy.Create); err != nil {
			return auth.CreateOptions{}, nil, errs.New(errs.PermissionDenied,
				"only the root token, or a holder of create with sudo on sys/tokens/root, may create a root token: "+err.Error())
		}
	} else if !caller.Policies.IsRoot() {
		held := caller.Policies.Policies()
		for _, p := range policies {
			if !slices.Contains(held, p) {
				return auth.CreateOptions{}, nil, caller.Deny("sys/tokens", fmt.Sprintf(
					"policy %q is not held by %s: a token can grant only policies its creator holds (holds: %s)",
					p, caller.Name(), strings.Join(held, ", ")))
			}
		}
	}
	var warnings []string
	requested := ttl
	if ttl == 0 {
		// No more tokens that never expire: the default is the maximum.
		ttl = c.TokenMaxTTL()
	}
	if exp := caller.Identity.ExpiresAt; !exp.IsZero() {
		left := time.Until(exp).Truncate(time.Second)
		if left < time.Second {
			return auth.CreateOptions{}, nil, precondition(fmt.Sprintf("the creating credential (token or SVID) expires at %s: no lifetime left to delegate", exp.UTC().Format(time.RFC3339)))
		}
		if ttl > left {
			ttl = left
			if requested > 0 {
				warnings = append(warnings, fmt.Sprintf("ttl capped to %s: the creating credential expires at %s", left, exp.UTC().Format(time.RFC3339)))
			}
		}
	}
	switch left := caller.Identity.UsesLeft; {
	case left < 0:
		return auth.CreateOptions{}, nil, precondition("the creating token spent its last use on this call: no uses left to delegate")
	case left > 0 && (uses == 0 || uses > left):
		if uses > 0 {
			warnings = append(warnings, fmt.Sprintf("uses capped to %d: the creating token has %d uses left", left, left))
		}
		uses = left
	}
	return auth.CreateOptions{Policies: policies, TTL: ttl, Uses: uses}, warnings, nil
}

// LookupToken returns token id's record; an empty id, or the caller's own,
// is the caller's token, which every token may look up.
func (c *Core) LookupToken(ctx context.Context, caller *Caller, id string) (*storage.Token, error) {
	if own := caller.Identity.TokenID; id == "" || id == own {
		id = own
		caller.AllowWithoutGrant("sys/tokens/"+id, "a token may look itself up")
	} else if err := caller.Authorize("sys/tokens/"+id, policy.Read); err != nil {
		return nil, err
	}
	rec, err := c.opts.Store.Tokens().Get(ctx, id)
	if err != nil {
		return nil, OpError("look up token", err)
	}
	return rec, nil
}

// RevokeToken revokes token id's lease, which deletes the token; a token
// from before leases tracked them is deleted directly.
func (c *Core) RevokeToken(ctx context.Context, id string) error {
	u, err := c.Unsealed()
	if err != nil {
		return err
	}
	err = u.Leases.Revoke(ctx, auth.LeaseID(id))
	if errors.Is(err, lease.ErrNotFound) {
		err = u.Tokens.Delete(ctx, id)
	}
	return OpError("revoke token", err)
}

// RenewedToken is a token after a renewal.
type RenewedToken struct {
	Info *storage.Token
	// MaxExpiresAt is the latest the token can be renewed to.
	MaxExpiresAt time.Time
	// Warnings say why the new expiry is short of what was asked.
	Warnings []string
}

// RenewToken extends token id (empty: the caller's own) by incSeconds from
// now (0: the token's own TTL), within its max TTL and within tokens.max_ttl
// of its creation. A token may always renew itself, as Vault's
// renew-self; renewing another needs update on sys/tokens/ID. Only tokens
// made renewable (a login whose role's token_max_ttl is above its
// token_ttl) can be renewed; the token's lease moves with it, so revoking
// the lease still revokes the token.
func (c *Core) RenewToken(ctx context.Context, caller *Caller, id string, incSeconds int64) (*RenewedToken, error) {
	inc, err := Seconds("increment_seconds", incSeconds, 0, "")
	if err != nil {
		return nil, err
	}
	if caller == nil || caller.Identity == nil {
		return nil, errs.New(errs.PermissionDenied, "permission denied: unauthenticated token renewal")
	}
	if own := caller.Identity.TokenID; id == "" || id == own {
		if own == "" {
			return nil, invalid("the caller did not authenticate with a token: name the token id to renew")
		}
		id = own
		caller.AllowWithoutGrant("sys/tokens/"+id, "a token may renew itself")
	} else if err := caller.Authorize("sys/tokens/"+id, policy.Update); err != nil {
		return nil, err
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	caller.addLease(auth.LeaseID(id))
	rec, err := c.opts.Store.Tokens().Get(ctx, id)
	if err != nil {
		return nil, OpError("renew token", err)
	}
	requested := inc
	if requested == 0 {
		if secs, err := strconv.ParseInt(rec.Meta[auth.MetaRenewIncrement], 10, 64); err == nil && secs > 0 {
			requested = time.Duration(secs) * time.Second
		}
	}
	// tokens.max_ttl bounds a token's whole life, renewals included, as it
	// bounds a new token's TTL; a lowered setting applies to renewals too.
	capAt := rec.CreatedAt.Add(c.TokenMaxTTL())
	now := time.Now()
	renewed, l, err := u.Tokens.Renew(ctx, u.Leases, id, inc, capAt)
	switch {
	case errors.Is(err, auth.ErrInvalidToken):
		return nil, precondition(fmt.Sprintf("token %s has expired or was revoked: log in again", id))
	case errors.Is(err, auth.ErrNotRenewable):
		return nil, precondition(fmt.Sprintf("token %s is not renewable (%v): only tokens issued with a max TTL above their TTL are (an auth role's token_max_ttl above its token_ttl)", id, err))
	case errors.Is(err, lease.ErrMaxTTL):
		return nil, precondition(fmt.Sprintf("token %s cannot be renewed further: it reached tokens.max_ttl (%s) from its creation", id, c.TokenMaxTTL()))
	case err != nil:
		return nil, OpError("renew token", err)
	}
	maxExp := l.MaxExpiresAt
	if capAt.Before(maxExp) {
		maxExp = capAt
	}
	var warnings []string
	if granted := renewed.ExpiresAt.Sub(now); requested > 0 && granted < requested-time.Second {
		why := "the token's max TTL"
		if capAt.Before(l.MaxExpiresAt) {
			why = fmt.Sprintf("tokens.max_ttl (%s) from the token's creation", c.TokenMaxTTL())
		}
		warnings = append(warnings, fmt.Sprintf("ttl capped to %s: %s ends at %s", granted.Truncate(time.Second), why, maxExp.UTC().Format(time.RFC3339)))
	}
	return &RenewedToken{Info: renewed, MaxExpiresAt: maxExp, Warnings: warnings}, nil
}
