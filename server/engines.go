package server

import (
	"context"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/lease"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type engineService struct {
	sigilv1.UnimplementedEngineServiceServer
	s *Server
}

func (h engineService) Enable(ctx context.Context, req *sigilv1.EnableEngineRequest) (*sigilv1.EnableEngineResponse, error) {
	return onUnsealed(h.s, "enable engine", func(u *core.Unsealed) (*sigilv1.EnableEngineResponse, error) {
		return &sigilv1.EnableEngineResponse{}, u.Mounts.Enable(ctx, req.GetMount(), req.GetType())
	})
}

func (h engineService) List(ctx context.Context, _ *sigilv1.ListEnginesRequest) (*sigilv1.ListEnginesResponse, error) {
	list, err := h.s.core.ListEngines(ctx)
	if err != nil {
		return nil, err
	}
	resp := &sigilv1.ListEnginesResponse{}
	for _, m := range list {
		resp.Engines = append(resp.Engines, &sigilv1.EngineInfo{Mount: m.Mount, Type: m.Type, ActiveLeases: int64(m.ActiveLeases)})
	}
	return resp, nil
}

func (h engineService) Disable(ctx context.Context, req *sigilv1.DisableEngineRequest) (*sigilv1.DisableEngineResponse, error) {
	return reply(&sigilv1.DisableEngineResponse{}, h.s.core.DisableEngine(ctx, req.GetMount(), req.GetRevokeLeases()))
}

func (h engineService) Configure(ctx context.Context, req *sigilv1.ConfigureEngineRequest) (*sigilv1.ConfigureEngineResponse, error) {
	return onUnsealed(h.s, "configure engine", func(u *core.Unsealed) (*sigilv1.ConfigureEngineResponse, error) {
		return &sigilv1.ConfigureEngineResponse{}, u.Mounts.Configure(ctx, req.GetMount(), req.GetConfig())
	})
}

func (h engineService) RotateRoot(ctx context.Context, req *sigilv1.RotateRootRequest) (*sigilv1.RotateRootResponse, error) {
	return onUnsealed(h.s, "rotate root credential", func(u *core.Unsealed) (*sigilv1.RotateRootResponse, error) {
		return &sigilv1.RotateRootResponse{}, u.Mounts.RotateRoot(ctx, req.GetMount())
	})
}

func (h engineService) WriteRole(ctx context.Context, req *sigilv1.WriteRoleRequest) (*sigilv1.WriteRoleResponse, error) {
	return onUnsealed(h.s, "write role", func(u *core.Unsealed) (*sigilv1.WriteRoleResponse, error) {
		return &sigilv1.WriteRoleResponse{}, u.Mounts.WriteRole(ctx, req.GetMount(), req.GetRole(), req.GetFields())
	})
}

func (h engineService) ReadRole(ctx context.Context, req *sigilv1.ReadRoleRequest) (*sigilv1.ReadRoleResponse, error) {
	return onUnsealed(h.s, "read role", func(u *core.Unsealed) (*sigilv1.ReadRoleResponse, error) {
		fields, err := u.Mounts.ReadRole(ctx, req.GetMount(), req.GetRole())
		return &sigilv1.ReadRoleResponse{Fields: fields}, err
	})
}

func (h engineService) ListRoles(ctx context.Context, req *sigilv1.ListRolesRequest) (*sigilv1.ListRolesResponse, error) {
	return onUnsealed(h.s, "list roles", func(u *core.Unsealed) (*sigilv1.ListRolesResponse, error) {
		roles, err := u.Mounts.ListRoles(ctx, req.GetMount())
		return &sigilv1.ListRolesResponse{Roles: roles}, err
	})
}

func (h engineService) DeleteRole(ctx context.Context, req *sigilv1.DeleteRoleRequest) (*sigilv1.DeleteRoleResponse, error) {
	return onUnsealed(h.s, "delete role", func(u *core.Unsealed) (*sigilv1.DeleteRoleResponse, error) {
		return &sigilv1.DeleteRoleResponse{}, u.Mounts.DeleteRole(ctx, req.GetMount(), req.GetRole())
	})
}

func (h engineService) Creds(ctx context.Context, req *sigilv1.CredsRequest) (*sigilv1.CredsResponse, error) {
	c, err := h.s.core.MintCreds(ctx, callerFrom(ctx), core.CredsRequest{Mount: req.GetMount(), Role: req.GetRole(),
		TTLSeconds: req.GetTtlSeconds(), WrapTTLSeconds: req.GetWrapTtlSeconds(), Recipient: recipientRef(req.GetRecipient())})
	if err != nil {
		return nil, err
	}
	if d := c.Delivery; d.WrapToken != "" {
		return &sigilv1.CredsResponse{LeaseId: c.Lease.ID, WrapToken: d.WrapToken, WrapExpiresAtUnix: d.WrapExpires.Unix(), PublicData: c.Public}, nil
	}
	return &sigilv1.CredsResponse{LeaseId: c.Lease.ID, LeaseDurationSeconds: c.LeaseSeconds, Renewable: c.Lease.Renewable, PublicData: c.Public, Envelope: c.Delivery.Envelope}, nil
}

// recipientRef is the wire recipient as core takes it.
func recipientRef(r *sigilv1.Recipient) *core.RecipientRef {
	if r == nil {
		return nil
	}
	return &core.RecipientRef{CertificateSerial: r.GetCertificateSerial(), KEM: r.GetKem(), PublicKey: r.GetPublicKey()}
}

type leaseService struct {
	sigilv1.UnimplementedLeaseServiceServer
	s *Server
}

func leaseInfo(l *lease.Lease) *sigilv1.LeaseInfo {
	return &sigilv1.LeaseInfo{Id: l.ID, Identity: l.Identity, IssuedAtUnix: l.IssuedAt.Unix(), ExpiresAtUnix: l.ExpiresAt.Unix(),
		MaxExpiresAtUnix: l.MaxExpiresAt.Unix(), Renewable: l.Renewable, State: string(l.State),
		Attempts: int32(l.Attempts), LastError: l.LastError}
}

func (h leaseService) List(ctx context.Context, req *sigilv1.ListLeasesRequest) (*sigilv1.ListLeasesResponse, error) {
	list, next, err := h.s.core.ListLeases(ctx, lease.ListOptions{Prefix: req.GetPrefix(), Irrevocable: req.GetIrrevocable(), After: req.GetPageToken(), Limit: int(req.GetPageSize())})
	if err != nil {
		return nil, err
	}
	resp := &sigilv1.ListLeasesResponse{NextPageToken: next}
	for _, l := range list {
		resp.Leases = append(resp.Leases, leaseInfo(l))
	}
	return resp, nil
}

func (h leaseService) Lookup(ctx context.Context, req *sigilv1.LookupLeaseRequest) (*sigilv1.LeaseInfo, error) {
	return wire(leaseInfo)(h.s.core.LookupLease(ctx, callerFrom(ctx), req.GetId()))
}

func (h leaseService) Renew(ctx context.Context, req *sigilv1.RenewLeaseRequest) (*sigilv1.LeaseInfo, error) {
	return wire(leaseInfo)(h.s.core.RenewLease(ctx, callerFrom(ctx), req.GetId(), req.GetIncrementSeconds()))
}

func (h leaseService) Revoke(ctx context.Context, req *sigilv1.RevokeLeaseRequest) (*sigilv1.RevokeLeaseResponse, error) {
	n, err := h.s.core.RevokeLeases(ctx, callerFrom(ctx), req.GetId(), req.GetPrefix(), req.GetForce())
	if err != nil {
		return nil, err
	}
	return &sigilv1.RevokeLeaseResponse{Revoked: int64(n)}, nil
}
