package server

import (
	"context"
	"net/http"
	"strings"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/errs"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type tokensService struct {
	sigilv1.UnimplementedTokensServiceServer
	s *Server
}

// Introspect implements TokensService.Introspect (RFC 7662; core decides
// who may ask).
func (h tokensService) Introspect(ctx context.Context, req *sigilv1.IntrospectRequest) (*sigilv1.IntrospectResponse, error) {
	r, err := h.s.core.Introspect(ctx, callerFrom(ctx), req.GetToken())
	if err != nil || r.Info == nil {
		return reply(&sigilv1.IntrospectResponse{Active: false}, err)
	}
	info := r.Info
	return &sigilv1.IntrospectResponse{Active: true, TokenType: info.TokenType, Scopes: info.Scopes, Audience: info.Audience,
		Subject: info.Subject, Issuer: info.Issuer, IssuedAtUnix: info.IssuedAt.Unix(), ExpiresAtUnix: info.ExpiresAt.Unix(),
		LeaseId: info.LeaseID, Mount: r.Mount, Role: info.Role}, nil
}

// publicDocument serves GET /PREFIX/MOUNT+suffix: a public per-mount
// document (JWKS, SSH CA key) that get reads from the mount's engine.
func publicDocument[T any](s *Server, suffix, contentType, cacheControl string, get func(context.Context, T) ([]byte, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mount, ok := strings.CutSuffix(r.PathValue("path"), suffix)
		if !ok {
			http.NotFound(w, r)
			return
		}
		e, err := core.PublicEngine[T](r.Context(), s.core, mount)
		if err != nil {
			if errs.KindOf(err) == errs.NotFound {
				http.NotFound(w, r)
			} else {
				http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
			}
			return
		}
		body, err := get(r.Context(), e)
		if err != nil {
			s.log.Error("public mount document", "mount", mount, "path", r.URL.Path, "err", err)
			http.Error(w, "document unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", contentType)
		if cacheControl != "" {
			w.Header().Set("Cache-Control", cacheControl)
		}
		_, _ = w.Write(body)
	}
}

// handleJWKS serves GET /jwks/MOUNT.json: the public signing keys of a
// tokens mount, for anyone verifying its JWTs. The cache time is short
// enough that a rotated-in key is picked up well before tokens signed with
// it are common.
func (s *Server) handleJWKS() http.HandlerFunc {
	return publicDocument(s, ".json", "application/jwk-set+json", "public, max-age=300",
		func(ctx context.Context, e engines.JWKSPublisher) ([]byte, error) { return e.JWKS(ctx) })
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
