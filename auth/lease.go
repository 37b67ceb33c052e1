package auth

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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

// Renew implements engines.Revoker. Nothing moves here: Tokens.Renew
// extends the lease first and the token after it, so a failure between
// the two leaves the token expiring before its lease, never after. (The
// lease manager calls this before it extends the lease; extending the
// token here would reverse that order.)
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
// expiring with the token, or never for a token without a TTL; renewable
// up to CreatedAt+MaxTTL when opts.MaxTTL is above opts.TTL). identity
// is the creator's name and owner the identity Sigil authenticated for it,
// recorded on the lease. If the lease cannot be registered the token is
// deleted again, so no token exists without a lease.
func (t *Tokens) CreateLeased(ctx context.Context, leases LeaseRegistrar, opts CreateOptions, identity, owner string) (string, *storage.Token, error) {
	tok, rec, err := t.Create(ctx, opts)
	if err != nil {
		return "", nil, err
	}
	var maxExp time.Time
	if opts.TTL > 0 && opts.MaxTTL > opts.TTL {
		maxExp = rec.CreatedAt.Add(opts.MaxTTL)
	}
	_, err = leases.Register(ctx, lease.RegisterRequest{Mount: LeaseMount, Role: LeaseRole, Name: rec.ID,
		Identity: identity, Owner: owner, ExpiresAt: rec.ExpiresAt, MaxExpiresAt: maxExp, Revocation: []byte(rec.ID)})
	if err != nil {
		if derr := t.Delete(context.WithoutCancel(ctx), rec.ID); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete the token again: %w", derr))
		}
		return "", nil, fmt.Errorf("token lease: %w", err)
	}
	return tok, rec, nil
}

// ErrNotRenewable: the token has no renewable lease (created without a
// max TTL above its TTL, or without an expiry).
var ErrNotRenewable = errors.New("token is not renewable")

// LeaseRenewer extends leases; *lease.Manager satisfies it.
type LeaseRenewer interface {
	Renew(ctx context.Context, id string, increment time.Duration) (*lease.Lease, error)
}

// Renew extends token id by increment from now (0: the token's own TTL,
// as created), never past its lease's max expiry nor past capAt (zero: no
// further cap). The lease moves first and the token follows it to the
// same expiry: a failure between the two leaves the token expiring before
// its lease, never valid after it. It returns the token as renewed and its
// lease. An expired or revoked token is ErrInvalidToken; one that was not
// made renewable, ErrNotRenewable; a renewal with no time left to give,
// lease.ErrMaxTTL.
func (t *Tokens) Renew(ctx context.Context, leases LeaseRenewer, id string, increment time.Duration, capAt time.Time) (*storage.Token, *lease.Lease, error) {
	if increment < 0 {
		return nil, nil, fmt.Errorf("%w: negative increment", lease.ErrInvalidRequest)
	}
	rec, err := t.store.Tokens().Get(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil, ErrInvalidToken
	}
	if err != nil {
		return nil, nil, fmt.Errorf("look up token: %w", err)
	}
	// At the precision leases and storage keep, so a cap lands exactly.
	now := t.now().UTC().Truncate(time.Microsecond)
	switch {
	case rec.ExpiresAt.IsZero():
		return nil, nil, fmt.Errorf("%w: it never expires", ErrNotRenewable)
	case !now.Before(rec.ExpiresAt):
		return nil, nil, ErrInvalidToken
	}
	if increment == 0 {
		secs, err := strconv.ParseInt(rec.Meta[MetaRenewIncrement], 10, 64)
		if err != nil || secs <= 0 {
			return nil, nil, fmt.Errorf("%w: it was created without a max TTL above its TTL", ErrNotRenewable)
		}
		increment = time.Duration(secs) * time.Second
	}
	if !capAt.IsZero() {
		left := capAt.Sub(now)
		if left <= 0 {
			return nil, nil, fmt.Errorf("%w: token %s reached its max TTL at %s", lease.ErrMaxTTL, id, capAt.UTC().Format(time.RFC3339))
		}
		increment = min(increment, left)
	}
	l, err := leases.Renew(ctx, LeaseID(id), increment)
	switch {
	case errors.Is(err, lease.ErrNotRenewable), errors.Is(err, lease.ErrNotFound):
		return nil, nil, fmt.Errorf("%w: %w", ErrNotRenewable, err)
	case errors.Is(err, lease.ErrNotActive):
		return nil, nil, ErrInvalidToken
	case err != nil:
		return nil, nil, fmt.Errorf("renew token lease: %w", err)
	}
	// The token always takes its lease's expiry: never later than the lease.
	if err := t.store.Tokens().Extend(ctx, id, l.ExpiresAt); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			// Revoked while renewing: the lease's revocation deletes it.
			return nil, nil, ErrInvalidToken
		}
		return nil, nil, fmt.Errorf("extend token (its lease was extended; the token still expires at %s): %w",
			rec.ExpiresAt.UTC().Format(time.RFC3339), err)
	}
	// A cached record has the old, earlier expiry: the safe side, but the
	// renewal should take effect at once here.
	t.evict(id)
	rec.ExpiresAt = l.ExpiresAt
	return rec, l, nil
}
