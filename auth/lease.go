package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// API tokens are tracked by leases like every other secret: revoking the
// lease (or its prefix, or its expiry) deletes the token, which logs its
// holder out at once. The lease engine, mounted internally at LeaseMount,
// is what the lease manager calls to do that; it mints nothing itself:
// CreateLeased makes the token and registers its lease.
const (
	LeaseEngineType = "token"
	LeaseMount      = "auth"
	LeaseRole       = "token"
)

// LeaseID is the lease of token id: auth/token/ID.
func LeaseID(tokenID string) string { return LeaseMount + "/" + LeaseRole + "/" + tokenID }

// TokenOfLease returns the token id of a lease under the token mount, and
// whether id is under that mount at all. A lease of the auth mount is an
// API token: it is managed only through sys/tokens, never through the
// leases/ paths, which are workload grants. An id under auth/ that is not
// a token lease yields "" and true.
func TokenOfLease(id string) (string, bool) {
	rest, ok := strings.CutPrefix(id, LeaseMount+"/")
	if !ok && id != LeaseMount {
		return "", false
	}
	tid, ok := strings.CutPrefix(rest, LeaseRole+"/")
	if !ok || tid == "" || strings.Contains(tid, "/") {
		return "", true
	}
	return tid, true
}

// LeaseEngine revokes API tokens for the lease manager. It is an
// engines.Revoker and nothing more: tokens are not minted under roles, so
// the mount refuses roles and mints.
type LeaseEngine struct{ tokens *Tokens }

var _ engines.Revoker = LeaseEngine{}

// RegisterLeaseEngine adds the lease engine type to reg; its revocations
// go to tokens, whose Delete also evicts the token from the verification
// cache, so a revoked token stops working at once.
func RegisterLeaseEngine(reg *engines.Registry, tokens *Tokens) error {
	return reg.Register(LeaseEngineType, func(engines.Env) (engines.Engine, error) { return LeaseEngine{tokens: tokens}, nil })
}

// EnsureLeaseMount mounts the lease engine at LeaseMount once per store.
func EnsureLeaseMount(ctx context.Context, m *engines.Mounts) error {
	err := m.EnableInternal(ctx, LeaseMount, LeaseEngineType)
	if err == nil || errors.Is(err, engines.ErrMountExists) {
		return nil
	}
	return fmt.Errorf("mount the token lease engine: %w", err)
}

// Configure implements engines.Engine; the engine has no settings.
func (LeaseEngine) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	return cfg, nil
}

// Close implements engines.Engine.
func (LeaseEngine) Close() error { return nil }

// Renew implements engines.Revoker. Token leases are not renewable, and a
// token is valid while its lease is: nothing moves in the backend.
func (LeaseEngine) Renew(context.Context, []byte, time.Time) error { return nil }

// Revoke implements engines.Revoker: the revocation data is the token id.
// A token already gone is a success.
func (e LeaseEngine) Revoke(ctx context.Context, revocation []byte) error {
	err := e.tokens.Delete(ctx, string(revocation))
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	return err
}

// LeaseRegistrar records leases of secrets made outside engines;
// *lease.Manager satisfies it.
type LeaseRegistrar interface {
	Register(ctx context.Context, req lease.RegisterRequest) (*lease.Lease, error)
}

// CreateLeased makes a token and registers its lease (auth/token/ID,
// expiring with the token, or never for a token without a TTL). identity
// is the creator's name and owner the identity Sigil authenticated for it,
// recorded on the lease. If the lease cannot be registered the token is
// deleted again, so no token exists without a lease.
func (t *Tokens) CreateLeased(ctx context.Context, leases LeaseRegistrar, opts CreateOptions, identity, owner string) (string, *storage.Token, error) {
	tok, rec, err := t.Create(ctx, opts)
	if err != nil {
		return "", nil, err
	}
	_, err = leases.Register(ctx, lease.RegisterRequest{Mount: LeaseMount, Role: LeaseRole, Name: rec.ID,
		Identity: identity, Owner: owner, ExpiresAt: rec.ExpiresAt, Revocation: []byte(rec.ID)})
	if err != nil {
		if derr := t.Delete(context.WithoutCancel(ctx), rec.ID); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete the token again: %w", derr))
		}
		return "", nil, fmt.Errorf("token lease: %w", err)
	}
	return tok, rec, nil
}
