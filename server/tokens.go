package server

import (
	"context"

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
