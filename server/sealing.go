package server

import (
	"context"

	"github.com/sigil-ca/sigil/core"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// current returns the activation, or nil while sealed.
func (s *Server) current() *core.Unsealed { return s.core.Current() }

// Init implements SysService.Init.
func (h sysService) Init(ctx context.Context, req *sigilv1.InitRequest) (*sigilv1.InitResponse, error) {
	res, err := h.s.core.AuditedInit(ctx, h.s.attempt(ctx), sigilv1.SysService_Init_FullMethodName, core.InitRequest{Shares: int(req.GetShares()), Threshold: int(req.GetThreshold()),
		ShareRecipients: req.GetShareRecipients(), Recipient: core.InitRecipient(recipientRef(req.GetRecipient()))})
	if err != nil {
		return nil, err
	}
	return &sigilv1.InitResponse{Shares: res.Shares, AutoUnseal: res.AutoUnseal, Envelope: res.Envelope}, nil
}

// Unseal implements SysService.Unseal.
func (h sysService) Unseal(ctx context.Context, req *sigilv1.UnsealRequest) (*sigilv1.UnsealResponse, error) {
	st, err := h.s.core.AuditedUnseal(ctx, h.s.attempt(ctx), sigilv1.SysService_Unseal_FullMethodName, req.GetShare(), req.GetReset_())
	if err != nil {
		return nil, err
	}
	return &sigilv1.UnsealResponse{Sealed: st.Sealed, Progress: int32(st.Progress), Threshold: int32(st.Threshold)}, nil
}

// Seal implements SysService.Seal.
func (h sysService) Seal(ctx context.Context, _ *sigilv1.SealRequest) (*sigilv1.SealResponse, error) {
	if err := h.s.core.Seal(ctx); err != nil {
		return nil, err
	}
	return &sigilv1.SealResponse{}, nil
}

// RotateKey implements SysService.RotateKey.
func (h sysService) RotateKey(ctx context.Context, _ *sigilv1.RotateKeyRequest) (*sigilv1.RotateKeyResponse, error) {
	v, err := h.s.core.RotateKey(ctx)
	if err != nil {
		return nil, err
	}
	return &sigilv1.RotateKeyResponse{KeyVersion: v}, nil
}

// Rewrap implements SysService.Rewrap.
func (h sysService) Rewrap(ctx context.Context, _ *sigilv1.RewrapRequest) (*sigilv1.RewrapResponse, error) {
	st, err := h.s.core.Rewrap(ctx)
	if err != nil {
		return nil, err
	}
	return &sigilv1.RewrapResponse{Rewrapped: st.Rewrapped, AlreadyCurrent: st.Current}, nil
}
