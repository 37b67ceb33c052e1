package server

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/tokens"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type tokensService struct {
	sigilv1.UnimplementedTokensServiceServer
	s *Server
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

var inactive = &sigilv1.IntrospectResponse{Active: false}

// Introspect implements TokensService.Introspect with RFC 7662 semantics:
// every failure to match is just "inactive".
func (h tokensService) Introspect(ctx context.Context, req *sigilv1.IntrospectRequest) (*sigilv1.IntrospectResponse, error) {
	tok := strings.TrimSpace(req.GetToken())
	if len(tok) > tokens.MaxTokenLen {
		return nil, status.Errorf(codes.InvalidArgument, "token exceeds %d bytes", tokens.MaxTokenLen)
	}
	leaseID, err := tokens.LeaseIDOf(tok)
	mount := mountOfLease(leaseID)
	if err != nil || engines.CheckPath(mount) != nil {
		// The answer follows from the token alone, which the caller holds:
		// nothing is disclosed, so no grant is needed to hear "inactive".
		h.s.allowWithoutGrant(ctx, "introspect", "malformed token: inactive, nothing looked up")
		return inactive, nil
	}
	if err := h.s.authorize(ctx, mount+"/introspect", policy.Read); err != nil {
		return nil, err
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	eng, err := a.Mounts.Engine(ctx, mount)
	if errors.Is(err, engines.ErrMountNotFound) {
		return inactive, nil
	}
	if err != nil {
		return nil, h.s.grpcError("introspect", err)
	}
	te, ok := eng.(engines.Introspector)
	if !ok {
		return inactive, nil
	}
	var tl *engines.ActiveLease
	l, rev, err := a.Leases.Active(ctx, leaseID)
	switch {
	case err == nil:
		defer clear(rev)
		tl = &engines.ActiveLease{ID: l.ID, IssuedAt: l.IssuedAt, ExpiresAt: l.ExpiresAt, Revocation: rev}
	case errors.Is(err, lease.ErrNotFound), errors.Is(err, lease.ErrNotActive):
		// tl stays nil: the engine still does the comparison's work.
	default:
		return nil, h.s.grpcError("introspect", err)
	}
	info, err := te.Introspect(ctx, tok, tl)
	if errors.Is(err, tokens.ErrInactive) {
		return inactive, nil
	}
	if err != nil {
		return nil, h.s.grpcError("introspect", err)
	}
	return &sigilv1.IntrospectResponse{Active: true, TokenType: info.TokenType, Scopes: info.Scopes, Audience: info.Audience,
		Subject: info.Subject, Issuer: info.Issuer, IssuedAtUnix: info.IssuedAt.Unix(), ExpiresAtUnix: info.ExpiresAt.Unix(),
		LeaseId: info.LeaseID, Mount: mount, Role: info.Role}, nil
}

// publicMountEngine resolves a public per-mount document's URL path
// (MOUNT + suffix) to the mount's running engine, answering 404 or 503
// itself when it cannot.
func (s *Server) publicMountEngine(w http.ResponseWriter, r *http.Request, suffix string) (engines.Engine, string, bool) {
	mount, ok := strings.CutSuffix(r.PathValue("path"), suffix)
	if !ok || engines.CheckPath(mount) != nil {
		http.NotFound(w, r)
		return nil, "", false
	}
	a, err := s.unsealed()
	if err != nil {
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return nil, "", false
	}
	eng, err := a.Mounts.Engine(r.Context(), mount)
	if err != nil {
		http.NotFound(w, r)
		return nil, "", false
	}
	return eng, mount, true
}

// handleJWKS serves GET /jwks/MOUNT.json: the public signing keys of a
// tokens mount, for anyone verifying its JWTs.
func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	eng, mount, ok := s.publicMountEngine(w, r, ".json")
	if !ok {
		return
	}
	te, ok := eng.(engines.JWKSPublisher)
	if !ok {
		http.NotFound(w, r)
		return
	}
	body, err := te.JWKS(r.Context())
	if err != nil {
		s.log.Error("JWKS", "mount", mount, "err", err)
		http.Error(w, "signing keys unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	// Short enough that a rotated-in key is picked up well before tokens
	// signed with it are common.
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(body)
}

// Renew implements TokenService.Renew (issue 17: login tokens renewable
// within their max). The handler decides: a token may renew itself.
func (h tokenService) Renew(ctx context.Context, req *sigilv1.RenewTokenRequest) (*sigilv1.RenewTokenResponse, error) {
	r, err := h.s.core.RenewToken(ctx, callerFrom(ctx), req.GetId(), req.GetIncrementSeconds())
	if err != nil {
		return nil, err
	}
	warn(ctx, r.Warnings)
	return &sigilv1.RenewTokenResponse{Info: tokenInfo(r.Info), MaxExpiresAtUnix: r.MaxExpiresAt.Unix(), Warnings: r.Warnings}, nil
}
