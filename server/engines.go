package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

type engineService struct {
	sigilv1.UnimplementedEngineServiceServer
	s *Server
}

func (h engineService) Enable(ctx context.Context, req *sigilv1.EnableEngineRequest) (*sigilv1.EnableEngineResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if err := a.Mounts.Enable(ctx, req.GetMount(), req.GetType()); err != nil {
		return nil, h.s.grpcError("enable engine", err)
	}
	return &sigilv1.EnableEngineResponse{}, nil
}

func (h engineService) List(ctx context.Context, _ *sigilv1.ListEnginesRequest) (*sigilv1.ListEnginesResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	list, err := a.Mounts.List(ctx)
	if err != nil {
		return nil, h.s.grpcError("list engines", err)
	}
	resp := &sigilv1.ListEnginesResponse{}
	for _, m := range list {
		if m.Path == tokenMount && m.Type == tokenEngineType {
			continue // internal: API tokens' leases, managed by `sigil token`
		}
		n, err := h.s.store.Leases().CountActive(ctx, engines.LeasePrefix(m.Path))
		if err != nil {
			return nil, h.s.grpcError("count leases", err)
		}
		resp.Engines = append(resp.Engines, &sigilv1.EngineInfo{Mount: m.Path, Type: m.Type, ActiveLeases: int64(n)})
	}
	return resp, nil
}

func (h engineService) Disable(ctx context.Context, req *sigilv1.DisableEngineRequest) (*sigilv1.DisableEngineResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	var revoke func(ctx context.Context, prefix string) error
	if req.GetRevokeLeases() {
		revoke = func(ctx context.Context, prefix string) error {
			_, err := a.Leases.RevokePrefix(ctx, prefix)
			return err
		}
	}
	if err := a.Mounts.Disable(ctx, req.GetMount(), revoke); err != nil {
		return nil, h.s.grpcError("disable engine", err)
	}
	return &sigilv1.DisableEngineResponse{}, nil
}

func (h engineService) Configure(ctx context.Context, req *sigilv1.ConfigureEngineRequest) (*sigilv1.ConfigureEngineResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if err := a.Mounts.Configure(ctx, req.GetMount(), req.GetConfig()); err != nil {
		return nil, h.s.grpcError("configure engine", err)
	}
	return &sigilv1.ConfigureEngineResponse{}, nil
}

func (h engineService) RotateRoot(ctx context.Context, req *sigilv1.RotateRootRequest) (*sigilv1.RotateRootResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if err := a.Mounts.RotateRoot(ctx, req.GetMount()); err != nil {
		return nil, h.s.grpcError("rotate root credential", err)
	}
	return &sigilv1.RotateRootResponse{}, nil
}

func (h engineService) WriteRole(ctx context.Context, req *sigilv1.WriteRoleRequest) (*sigilv1.WriteRoleResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if err := a.Mounts.WriteRole(ctx, req.GetMount(), req.GetRole(), req.GetFields()); err != nil {
		return nil, h.s.grpcError("write role", err)
	}
	return &sigilv1.WriteRoleResponse{}, nil
}

func (h engineService) ReadRole(ctx context.Context, req *sigilv1.ReadRoleRequest) (*sigilv1.ReadRoleResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	fields, err := a.Mounts.ReadRole(ctx, req.GetMount(), req.GetRole())
	if err != nil {
		return nil, h.s.grpcError("read role", err)
	}
	return &sigilv1.ReadRoleResponse{Fields: fields}, nil
}

func (h engineService) ListRoles(ctx context.Context, req *sigilv1.ListRolesRequest) (*sigilv1.ListRolesResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	roles, err := a.Mounts.ListRoles(ctx, req.GetMount())
	if err != nil {
		return nil, h.s.grpcError("list roles", err)
	}
	return &sigilv1.ListRolesResponse{Roles: roles}, nil
}

func (h engineService) DeleteRole(ctx context.Context, req *sigilv1.DeleteRoleRequest) (*sigilv1.DeleteRoleResponse, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	if err := a.Mounts.DeleteRole(ctx, req.GetMount(), req.GetRole()); err != nil {
		return nil, h.s.grpcError("delete role", err)
	}
	return &sigilv1.DeleteRoleResponse{}, nil
}

func (h engineService) Creds(ctx context.Context, req *sigilv1.CredsRequest) (*sigilv1.CredsResponse, error) {
	if err := h.s.limit(ctx); err != nil {
		return nil, err
	}
	ttl, err := secondsField("ttl_seconds", req.GetTtlSeconds(), 0, "")
	if err != nil {
		return nil, err
	}
	// A wrapping token is a token: tokens.max_ttl bounds it too.
	wrapTTL, err := secondsField("wrap_ttl_seconds", req.GetWrapTtlSeconds(), h.s.tokenMaxTTL(), "tokens.max_ttl")
	if err != nil {
		return nil, err
	}
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	to, err := h.s.core.Destination(ctx, recipientRef(req.GetRecipient()), wrapTTL)
	if err != nil {
		return nil, err
	}
	id := identityFrom(ctx)
	minted, err := a.Leases.Mint(ctx, lease.MintRequest{Mount: req.GetMount(), Role: req.GetRole(),
		Identity: id.Name, Owner: leaseOwner(id), TTL: ttl})
	if err != nil {
		return nil, h.s.grpcError("mint", err)
	}
	l := minted.Lease
	if r := requestFrom(ctx); r != nil {
		r.leaseIDs = append(r.leaseIDs, l.ID)
	}
	secs := int64(l.TTL(time.Now()).Round(time.Second).Seconds())
	d, err := h.s.core.Deliver(ctx, to, core.Secret{BindingID: l.ID, Data: minted.Data, LeaseSeconds: secs, Renewable: l.Renewable},
		func(ctx context.Context) error { return a.Leases.Revoke(ctx, l.ID) })
	if err != nil {
		return nil, err
	}
	if to.Wrapped() {
		return &sigilv1.CredsResponse{LeaseId: l.ID, WrapToken: d.WrapToken, WrapExpiresAtUnix: d.WrapExpires.Unix(), PublicData: minted.Public}, nil
	}
	return &sigilv1.CredsResponse{LeaseId: l.ID, LeaseDurationSeconds: secs, Renewable: l.Renewable,
		PublicData: minted.Public, Envelope: d.Envelope}, nil
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

func (h leaseService) leases() (*lease.Manager, error) {
	a, err := h.s.unsealed()
	if err != nil {
		return nil, err
	}
	return a.Leases, nil
}

func (h leaseService) List(ctx context.Context, req *sigilv1.ListLeasesRequest) (*sigilv1.ListLeasesResponse, error) {
	if req.GetPageSize() < 0 || req.GetPageSize() > 1000 {
		return nil, status.Error(codes.InvalidArgument, "page_size must be between 0 and 1000")
	}
	m, err := h.leases()
	if err != nil {
		return nil, err
	}
	list, next, err := m.List(ctx, lease.ListOptions{Prefix: req.GetPrefix(), Irrevocable: req.GetIrrevocable(), After: req.GetPageToken(), Limit: int(req.GetPageSize())})
	if err != nil {
		return nil, h.s.grpcError("list leases", err)
	}
	resp := &sigilv1.ListLeasesResponse{NextPageToken: next}
	for _, l := range list {
		resp.Leases = append(resp.Leases, leaseInfo(l))
	}
	return resp, nil
}

// leaseOps names the administrative path of each lease operation:
// sys/leases/OP/ID, which (like every sys path) needs sudo.
const (
	leaseOpLookup = "lookup"
	leaseOpRenew  = "renew"
	leaseOpRevoke = "revoke"
)

// access decides whether the caller may perform op (capability c) on lease
// id, and records the deciding path and reason for the audit. It returns
// the lease when it had to read it (nil otherwise).
//
//   - A lease of the auth mount is an API token: it needs c on
//     sys/tokens/TOKEN_ID (with sudo), exactly as `sigil token` does, and
//     is never reachable through leases/ grants.
//   - A caller granted c with sudo on sys/leases/OP/ID may act on any lease.
//   - Anyone else needs c on leases/ID and must be the lease's owner: the
//     identity that minted it. A lease without a recorded owner (minted
//     before owners were recorded) is administrators' only.
func (h leaseService) access(ctx context.Context, m *lease.Manager, op, id string, c policy.Capability) (*lease.Lease, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "a lease id is required")
	}
	if tid, ok := tokenOfLease(id); ok {
		if tid == "" {
			return nil, h.s.deny(ctx, "sys/tokens", fmt.Sprintf("lease %s is under the internal auth mount: API token leases are managed only through sys/tokens (sigil token)", id))
		}
		if err := h.s.authorize(ctx, "sys/tokens/"+tid, c); err != nil {
			return nil, status.Errorf(codes.PermissionDenied, "%s: lease %s is an API token, managed only through sys/tokens (sigil token)", status.Convert(err).Message(), id)
		}
		return nil, nil
	}
	admin := "sys/leases/" + op + "/" + id
	if r := requestFrom(ctx); r != nil && r.set != nil && r.set.Allowed(admin, c).Allowed {
		return nil, h.s.authorize(ctx, admin, c)
	}
	if err := h.s.authorize(ctx, "leases/"+id, c); err != nil {
		return nil, err
	}
	l, err := m.Lookup(ctx, id)
	if err != nil {
		return nil, h.s.grpcError(op+" lease", err)
	}
	if l.OwnedBy(leaseOwner(identityFrom(ctx))) {
		return l, nil
	}
	why := "was minted by another identity"
	if l.Owner == "" {
		why = "has no recorded owner (it predates lease owners)"
	}
	return nil, h.s.deny(ctx, admin, fmt.Sprintf("lease %s %s: acting on it needs %s with sudo on %s", id, why, c, admin))
}

func (h leaseService) Lookup(ctx context.Context, req *sigilv1.LookupLeaseRequest) (*sigilv1.LeaseInfo, error) {
	m, err := h.leases()
	if err != nil {
		return nil, err
	}
	l, err := h.access(ctx, m, leaseOpLookup, req.GetId(), policy.Read)
	if err != nil {
		return nil, err
	}
	if l == nil {
		if l, err = m.Lookup(ctx, req.GetId()); err != nil {
			return nil, h.s.grpcError("look up lease", err)
		}
	}
	return leaseInfo(l), nil
}

func (h leaseService) Renew(ctx context.Context, req *sigilv1.RenewLeaseRequest) (*sigilv1.LeaseInfo, error) {
	inc, err := secondsField("increment_seconds", req.GetIncrementSeconds(), 0, "")
	if err != nil {
		return nil, err
	}
	m, err := h.leases()
	if err != nil {
		return nil, err
	}
	if _, err := h.access(ctx, m, leaseOpRenew, req.GetId(), policy.Update); err != nil {
		return nil, err
	}
	l, err := m.Renew(ctx, req.GetId(), inc)
	if err != nil {
		return nil, h.s.grpcError("renew lease", err)
	}
	return leaseInfo(l), nil
}

func (h leaseService) Revoke(ctx context.Context, req *sigilv1.RevokeLeaseRequest) (*sigilv1.RevokeLeaseResponse, error) {
	if (req.GetId() == "") == (req.GetPrefix() == "") {
		return nil, status.Error(codes.InvalidArgument, "give exactly one of id and prefix")
	}
	m, err := h.leases()
	if err != nil {
		return nil, err
	}
	if r := requestFrom(ctx); r != nil && req.GetId() != "" {
		r.leaseIDs = append(r.leaseIDs, req.GetId())
	}
	switch {
	case req.GetPrefix() != "":
		// A prefix names a mount or a role: "db" and "db/" both mean the
		// mount db, never a sibling such as "db2/".
		prefix := strings.TrimSuffix(req.GetPrefix(), "/")
		if err := engines.CheckPath(prefix); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "prefix %q: name a mount or MOUNT/ROLE: %v", req.GetPrefix(), err)
		}
		if _, ok := tokenOfLease(prefix); ok {
			return nil, h.s.deny(ctx, "sys/tokens", fmt.Sprintf("prefix %q covers API token leases (auth/): tokens are revoked only through sys/tokens, one at a time (sigil token revoke ID)", req.GetPrefix()))
		}
		if err := h.s.authorize(ctx, "sys/leases/revoke-prefix/"+prefix, policy.Update); err != nil {
			return nil, err
		}
		n, err := m.RevokePrefix(ctx, prefix+"/")
		if err != nil {
			return &sigilv1.RevokeLeaseResponse{Revoked: int64(n)}, h.s.grpcError("revoke prefix", err)
		}
		return &sigilv1.RevokeLeaseResponse{Revoked: int64(n)}, nil
	case req.GetForce():
		if tid, ok := tokenOfLease(req.GetId()); ok {
			// Forgetting a token's lease would leave the token working.
			return nil, h.s.deny(ctx, "sys/tokens", fmt.Sprintf("lease %s is an API token (token %q): revoke it through sys/tokens (sigil token revoke), never by force", req.GetId(), tid))
		}
		if err := h.s.authorize(ctx, "sys/leases/revoke-force/"+req.GetId(), policy.Update); err != nil {
			return nil, err
		}
		if err := m.RevokeForce(ctx, req.GetId()); err != nil {
			return nil, h.s.grpcError("force revoke", err)
		}
	default:
		if _, err := h.access(ctx, m, leaseOpRevoke, req.GetId(), policy.Delete); err != nil {
			return nil, err
		}
		if err := m.Revoke(ctx, req.GetId()); err != nil {
			return nil, h.s.grpcError("revoke lease", err)
		}
	}
	return &sigilv1.RevokeLeaseResponse{Revoked: 1}, nil
}
