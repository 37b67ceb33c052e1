package core

import (
	"context"
	"errors"
	"strings"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/tokens"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
)

// Introspection is what RFC 7662 introspection answers: Info is nil for an
// inactive token.
type Introspection struct {
	Info  *engines.Introspection
	Mount string
}

// mountOfLease returns the mount of lease id MOUNT/ROLE/ID ("" if id has
// fewer than three segments).
func mountOfLease(id string) string {
	i := strings.LastIndexByte(id, '/')
	if i <= 0 {
		return ""
	}
	j := strings.LastIndexByte(id[:i], '/')
	if j <= 0 {
		return ""
	}
	return id[:j]
}

// Introspect answers whether an ephemeral token is active, with RFC 7662
// semantics: every failure to match is just "inactive". The mount comes
// from the token, so the caller needs read on MOUNT/introspect; a
// malformed token is inactive without a grant, since that answer follows
// from the token alone, which the caller holds.
func (c *Core) Introspect(ctx context.Context, caller *Caller, token string) (*Introspection, error) {
	tok := strings.TrimSpace(token)
	if len(tok) > tokens.MaxTokenLen {
		return nil, errs.Errorf(errs.InvalidArgument, "token exceeds %d bytes", tokens.MaxTokenLen)
	}
	leaseID, err := tokens.LeaseIDOf(tok)
	mount := mountOfLease(leaseID)
	if err != nil || engines.CheckPath(mount) != nil {
		caller.AllowWithoutGrant("introspect", "malformed token: inactive, nothing looked up")
		return &Introspection{}, nil
	}
	if err := caller.Authorize(mount+"/introspect", policy.Read); err != nil {
		return nil, err
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	eng, err := u.Mounts.Engine(ctx, mount)
	if errors.Is(err, engines.ErrMountNotFound) {
		return &Introspection{}, nil
	}
	if err != nil {
		return nil, OpError("introspect", err)
	}
	te, ok := eng.(engines.Introspector)
	if !ok {
		return &Introspection{}, nil
	}
	var tl *engines.ActiveLease
	l, rev, err := u.Leases.Active(ctx, leaseID)
	switch {
	case err == nil:
		defer clear(rev)
		tl = &engines.ActiveLease{ID: l.ID, IssuedAt: l.IssuedAt, ExpiresAt: l.ExpiresAt, Revocation: rev}
	case errors.Is(err, lease.ErrNotFound), errors.Is(err, lease.ErrNotActive):
		// tl stays nil: the engine still does the comparison's work.
	default:
		return nil, OpError("introspect", err)
	}
	info, err := te.Introspect(ctx, tok, tl)
	if errors.Is(err, tokens.ErrInactive) {
		return &Introspection{}, nil
	}
	if err != nil {
		return nil, OpError("introspect", err)
	}
	return &Introspection{Info: info, Mount: mount}, nil
}

// PublicEngine returns a mount's engine for a public per-mount document
// (JWKS, SSH CA key): NotFound for a bad or unknown mount, and for one
// whose engine does not publish T.
func PublicEngine[T any](ctx context.Context, c *Core, mount string) (T, error) {
	var zero T
	if engines.CheckPath(mount) != nil {
		return zero, errs.New(errs.NotFound, "no such mount")
	}
	u, err := c.Unsealed()
	if err != nil {
		return zero, err
	}
	eng, err := u.Mounts.Engine(ctx, mount)
	if err != nil {
		return zero, errs.New(errs.NotFound, "no such mount")
	}
	e, ok := eng.(T)
	if !ok {
		return zero, errs.New(errs.NotFound, "the mount publishes no such document")
	}
	return e, nil
}
