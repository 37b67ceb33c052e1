package server

import (
	"context"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/storage"
)

// API tokens are leases under the internal mount auth (package auth owns
// the engine and the lease id format); these names keep the handlers'
// references short.
const (
	tokenEngineType = auth.LeaseEngineType
	tokenMount      = auth.LeaseMount
)

// tokenLeaseID is the lease of token id.
func tokenLeaseID(id string) string { return auth.LeaseID(id) }

// tokenOfLease is auth.TokenOfLease.
func tokenOfLease(id string) (string, bool) { return auth.TokenOfLease(id) }

// createLeasedToken makes a token and registers its lease through the
// lease manager; no token exists without a lease.
func (s *Server) createLeasedToken(ctx context.Context, a *core.Unsealed, opts auth.CreateOptions, identity, owner string) (string, *storage.Token, error) {
	return a.Tokens.CreateLeased(ctx, a.Leases, opts, identity, owner)
}
