package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/storage"
)

// API tokens are tracked by leases like every other secret: revoking the
// lease (or its prefix, or its expiry) deletes the token, which logs its
// holder out at once. The internal "token" engine at mount "auth" is what
// the lease manager calls to do that; it mints nothing itself.
const (
	tokenEngineType = "token"
	tokenMount      = "auth"
	tokenRole       = "token"
	// noExpiryLease stands for "until revoked" for tokens without a TTL.
	noExpiryLease = 100 * 365 * 24 * time.Hour
)

// tokenLeaseID is the lease of token id.
func tokenLeaseID(id string) string { return tokenMount + "/" + tokenRole + "/" + id }

// tokenOfLease returns the token id of a lease under the token mount, and
// whether id is under that mount at all. A lease of the auth mount is an
// API token: it is managed only through sys/tokens, never through the
// leases/ paths, which are workload grants. An id under auth/ that is not
// a token lease yields "" and true.
func tokenOfLease(id string) (string, bool) {
	rest, ok := strings.CutPrefix(id, tokenMount+"/")
	if !ok && id != tokenMount {
		return "", false
	}
	tid, ok := strings.CutPrefix(rest, tokenRole+"/")
	if !ok || tid == "" || strings.Contains(tid, "/") {
		return "", true
	}
	return tid, true
}

// leaseOwner is the owner recorded on the leases id mints: the identity
// Sigil authenticated ("token:ID" for a token, the SPIFFE ID of a verified
// workload certificate), never anything the client asserts.
func leaseOwner(id *auth.Identity) string {
	if id == nil {
		return ""
	}
	return id.Name
}

// tokenEngine's tokens is *auth.Tokens, whose Delete also evicts the token
// from the verification cache, so a revoked token stops working at once.
type tokenEngine struct {
	tokens interface {
		Delete(ctx context.Context, id string) error
	}
}

func (tokenEngine) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	return cfg, nil
}

func (tokenEngine) ValidateRole(_ context.Context, _ string, fields map[string]string) (map[string]string, error) {
	return fields, nil
}

func (tokenEngine) Prepare(context.Context, engines.Role, engines.MintRequest) (*engines.Pending, error) {
	return nil, fmt.Errorf("%w: tokens are made by `sigil token create`", engines.ErrNotSupported)
}

func (tokenEngine) Create(context.Context, *engines.Pending) (*engines.Secret, error) {
	return nil, engines.ErrNotSupported
}

// Renew needs nothing in the backend: a token is valid while its lease is.
func (tokenEngine) Renew(context.Context, []byte, time.Time) error { return nil }

func (e tokenEngine) Revoke(ctx context.Context, revocation []byte) error {
	err := e.tokens.Delete(ctx, string(revocation))
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	return err
}

func (tokenEngine) Close() error { return nil }

// ensureTokenMount mounts the token engine once per store.
func ensureTokenMount(ctx context.Context, m *engines.Mounts) error {
	err := m.EnableInternal(ctx, tokenMount, tokenEngineType)
	if err == nil || errors.Is(err, engines.ErrMountExists) {
		return nil
	}
	return fmt.Errorf("mount the token engine: %w", err)
}

// createLeasedToken makes a token and its lease; if the lease cannot be
// stored the token is deleted again, so no token exists without a lease.
func (s *Server) createLeasedToken(ctx context.Context, a *core.Unsealed, opts auth.CreateOptions, identity, owner string) (string, *storage.Token, error) {
	tok, rec, err := a.Tokens.Create(ctx, opts)
	if err != nil {
		return "", nil, err
	}
	now := time.Now().UTC()
	exp := now.Add(noExpiryLease)
	if !rec.ExpiresAt.IsZero() {
		exp = rec.ExpiresAt
	}
	id := tokenLeaseID(rec.ID)
	sealed, err := s.barrier.Seal(ctx, lease.SealKind, id, []byte(rec.ID))
	if err == nil {
		err = s.store.Leases().Put(ctx, &storage.Lease{ID: id, Mount: tokenMount, Role: tokenRole, Identity: identity,
			Owner: owner, IssuedAt: now, ExpiresAt: exp, MaxExpiresAt: exp, SealedRevocation: sealed})
	}
	if err != nil {
		if derr := a.Tokens.Delete(context.WithoutCancel(ctx), rec.ID); derr != nil {
			s.log.Error("delete token after its lease failed", "token_id", rec.ID, "err", derr)
		}
		return "", nil, fmt.Errorf("token lease: %w", err)
	}
	return tok, rec, nil
}
