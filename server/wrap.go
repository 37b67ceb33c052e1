package server

import (
	"context"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/core"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type wrapService struct {
	sigilv1.UnimplementedWrapServiceServer
	s *Server
}

// Unwrap implements WrapService.Unwrap. Every attempt is audited, and a
// failed one says why, so a second unwrap (someone got there first) shows.
func (h wrapService) Unwrap(ctx context.Context, req *sigilv1.UnwrapRequest) (resp *sigilv1.CredsResponse, err error) {
	if _, err := h.s.core.Unsealed(); err != nil {
		return nil, err
	}
	var u *core.Unwrapped
	defer func() { resp, err = h.audit(ctx, req, u, resp, err) }()
	rcpt, err := h.s.core.Recipient(ctx, recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, err
	}
	if u, err = h.s.core.Unwrap(ctx, req.GetToken(), rcpt); err != nil {
		return nil, err
	}
	return &sigilv1.CredsResponse{LeaseId: u.LeaseID, LeaseDurationSeconds: u.LeaseSeconds, Renewable: u.Renewable, Envelope: u.Envelope}, nil
}

// audit records an unwrap attempt (the token only as an HMAC); when the
// record cannot be written the unwrap fails like any audited call.
func (h wrapService) audit(ctx context.Context, req *sigilv1.UnwrapRequest, u *core.Unwrapped, resp *sigilv1.CredsResponse, err error) (*sigilv1.CredsResponse, error) {
	rec := audit.Record{RequestID: requestIDFrom(ctx), Identity: "wrapping-token", AuthMethod: "wrapping-token",
		Operation: sigilv1.WrapService_Unwrap_FullMethodName, Path: "sys/wrapping/unwrap",
		Decision: audit.Decision{Allowed: err == nil, Reason: "single-use wrapping token"}, Status: grpcCode(err).String(),
		Request: map[string]audit.Value{"token": audit.Secret(req.GetToken())}}
	if u != nil && u.LeaseID != "" {
		rec.LeaseIDs = []string{u.LeaseID}
	}
	if err != nil {
		rec.Error, rec.Decision.Reason = publicMessage(err), "unwrap refused"
	}
	if aerr := h.s.core.Audit(ctx, rec); aerr != nil {
		return nil, aerr
	}
	return resp, err
}
