package server

import (
	"context"
	"time"

	"github.com/sigil-ca/sigil/core"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/registration"
)

// agentService adapts core's registration entries and node-scoped
// issuance to the wire.
type agentService struct {
	sigilv1.UnimplementedAgentServiceServer
	s *Server
}

func entryToWire(e *registration.Entry) *sigilv1.RegistrationEntry {
	return &sigilv1.RegistrationEntry{Id: e.ID, ParentId: e.ParentID, SpiffeId: e.SPIFFEID, Selectors: e.Selectors,
		TtlSeconds: int64(e.TTL / time.Second), CreatedAtUnix: e.CreatedAt.Unix()}
}

func entriesToWire(list []*registration.Entry) *sigilv1.ListEntriesResponse {
	out := &sigilv1.ListEntriesResponse{}
	for _, e := range list {
		out.Entries = append(out.Entries, entryToWire(e))
	}
	return out
}

func (h agentService) CreateEntry(ctx context.Context, req *sigilv1.CreateEntryRequest) (*sigilv1.RegistrationEntry, error) {
	ttl, err := core.RequestTTL(req.GetTtlSeconds())
	if err != nil {
		return nil, err
	}
	e := &registration.Entry{ParentID: req.GetParentId(), SPIFFEID: req.GetSpiffeId(), Selectors: req.GetSelectors(), TTL: ttl}
	if err := h.s.core.CreateEntry(ctx, e); err != nil {
		return nil, err
	}
	return entryToWire(e), nil
}

func (h agentService) ListEntries(ctx context.Context, req *sigilv1.ListEntriesRequest) (*sigilv1.ListEntriesResponse, error) {
	return wire(entriesToWire)(h.s.core.ListEntries(ctx, req.GetParentId()))
}

func (h agentService) DeleteEntry(ctx context.Context, req *sigilv1.DeleteEntryRequest) (*sigilv1.DeleteEntryResponse, error) {
	if err := h.s.core.DeleteEntry(ctx, callerFrom(ctx), req.GetId()); err != nil {
		return nil, err
	}
	return &sigilv1.DeleteEntryResponse{}, nil
}

func (h agentService) FetchEntries(ctx context.Context, _ *sigilv1.FetchEntriesRequest) (*sigilv1.ListEntriesResponse, error) {
	return wire(entriesToWire)(h.s.core.AgentEntries(ctx, callerFrom(ctx)))
}

func (h agentService) MintX509SVID(ctx context.Context, req *sigilv1.MintX509SVIDRequest) (*sigilv1.MintX509SVIDResponse, error) {
	issued, err := h.s.core.MintEntrySVID(ctx, callerFrom(ctx), req.GetEntryId(), req.GetCsr())
	if err != nil {
		return nil, err
	}
	return &sigilv1.MintX509SVIDResponse{CertificatePem: pemBundle(issued.Certificate), ChainPem: issued.IssuerChainPEM(),
		NotAfterUnix: issued.Certificate.NotAfter.Unix()}, nil
}

func (h agentService) MintJWTSVID(ctx context.Context, req *sigilv1.MintJWTSVIDRequest) (*sigilv1.MintJWTSVIDResponse, error) {
	d, exp, err := h.s.core.MintEntryJWT(ctx, callerFrom(ctx), req.GetEntryId(), req.GetAudience(), recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, err
	}
	return &sigilv1.MintJWTSVIDResponse{Envelope: d.Envelope, ExpiresAtUnix: exp.Unix()}, nil
}

func (h agentService) GetBundle(ctx context.Context, _ *sigilv1.GetBundleRequest) (*sigilv1.GetBundleResponse, error) {
	b, err := h.s.core.Bundle(ctx)
	if err != nil {
		return nil, err
	}
	return &sigilv1.GetBundleResponse{TrustDomain: b.TrustDomain, X509RootsPem: string(b.RootsPEM), Jwks: b.JWKS}, nil
}

func (h agentService) RotateJWTKey(ctx context.Context, req *sigilv1.RotateJWTKeyRequest) (*sigilv1.RotateJWTKeyResponse, error) {
	return wire(func(keys []registration.JWTKeyInfo) *sigilv1.RotateJWTKeyResponse {
		resp := &sigilv1.RotateJWTKeyResponse{}
		for _, k := range keys {
			resp.Keys = append(resp.Keys, &sigilv1.JWTKeyInfo{Kid: k.KID, Name: k.Name, ActiveFromUnix: k.ActiveFrom.Unix(), Active: k.Active})
		}
		return resp
	})(h.s.core.RotateJWTKey(ctx, req.GetRetirePrevious()))
}
