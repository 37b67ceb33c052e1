package server

import (
	"context"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type wrapService struct {
	sigilv1.UnimplementedWrapServiceServer
	s *Server
}

// Unwrap implements WrapService.Unwrap; core audits every attempt.
func (h wrapService) Unwrap(ctx context.Context, req *sigilv1.UnwrapRequest) (*sigilv1.CredsResponse, error) {
	u, err := h.s.core.AuditedUnwrap(ctx, h.s.attempt(ctx), sigilv1.WrapService_Unwrap_FullMethodName, req.GetToken(), recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, err
	}
	return &sigilv1.CredsResponse{LeaseId: u.LeaseID, LeaseDurationSeconds: u.LeaseSeconds, Renewable: u.Renewable, Envelope: u.Envelope}, nil
}
