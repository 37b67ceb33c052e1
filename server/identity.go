package server

import (
	"context"
	"time"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type identityService struct {
	sigilv1.UnimplementedIdentityServiceServer
	s *Server
}

func (h identityService) CreateJoinToken(ctx context.Context, req *sigilv1.CreateJoinTokenRequest) (*sigilv1.CreateJoinTokenResponse, error) {
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	j, err := h.s.core.CreateJoinToken(ctx, callerFrom(ctx), req.GetSpiffeId(), ttl, recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, err
	}
	return &sigilv1.CreateJoinTokenResponse{Envelope: j.Delivery.Envelope, ExpiresAtUnix: j.ExpiresAt.Unix()}, nil
}

func (h identityService) Enroll(ctx context.Context, req *sigilv1.EnrollRequest) (*sigilv1.EnrollResponse, error) {
	issued, err := h.s.core.AuditedEnroll(ctx, h.s.attempt(ctx), sigilv1.IdentityService_Enroll_FullMethodName, req.GetJoinToken(), req.GetCsr())
	if err != nil {
		return nil, err
	}
	r := signResponse(issued)
	return &sigilv1.EnrollResponse{CertificatePem: r.CertificatePem, ChainPem: r.ChainPem, Serial: r.Serial, NotAfterUnix: r.NotAfterUnix}, nil
}
