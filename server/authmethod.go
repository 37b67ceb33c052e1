package server

import (
	"context"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc/peer"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/core"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// authMethodService adapts AuthMethodService to core and the auth-method
// manager. Administration is authorised by the table (sys/auth/MOUNT...);
// Login, AuthURL and Callback are public and audit every attempt here.
type authMethodService struct {
	sigilv1.UnimplementedAuthMethodServiceServer
	s *Server
}

func (h authMethodService) manager() (*authmethod.Manager, error) {
	a, err := h.s.core.Unsealed()
	if err != nil {
		return nil, err
	}
	return a.AuthMethods, nil
}

func (h authMethodService) Enable(ctx context.Context, req *sigilv1.EnableAuthRequest) (*sigilv1.EnableAuthResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	if err := m.Enable(ctx, req.GetMount(), req.GetType()); err != nil {
		return nil, core.OpError("enable auth method", err)
	}
	return &sigilv1.EnableAuthResponse{}, nil
}

func (h authMethodService) List(ctx context.Context, _ *sigilv1.ListAuthRequest) (*sigilv1.ListAuthResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	list, err := m.List(ctx)
	if err != nil {
		return nil, core.OpError("list auth methods", err)
	}
	out := &sigilv1.ListAuthResponse{}
	for _, mt := range list {
		out.Mounts = append(out.Mounts, &sigilv1.AuthMountInfo{Mount: mt.Name, Type: mt.Type, Configured: mt.Configured, Roles: int32(mt.Roles)})
	}
	return out, nil
}

func (h authMethodService) Disable(ctx context.Context, req *sigilv1.DisableAuthRequest) (*sigilv1.DisableAuthResponse, error) {
	n, err := h.s.core.DisableAuth(ctx, req.GetMount())
	if err != nil {
		return nil, core.OpError("disable auth method", err)
	}
	return &sigilv1.DisableAuthResponse{RevokedTokens: int64(n)}, nil
}

func (h authMethodService) Configure(ctx context.Context, req *sigilv1.ConfigureAuthRequest) (*sigilv1.ConfigureAuthResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	if err := m.Configure(ctx, req.GetMount(), req.GetConfig()); err != nil {
		return nil, core.OpError("configure auth method", err)
	}
	return &sigilv1.ConfigureAuthResponse{}, nil
}

func (h authMethodService) WriteRole(ctx context.Context, req *sigilv1.WriteAuthRoleRequest) (*sigilv1.WriteAuthRoleResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	if err := m.WriteRole(ctx, req.GetMount(), req.GetRole(), req.GetFields()); err != nil {
		return nil, core.OpError("write auth role", err)
	}
	return &sigilv1.WriteAuthRoleResponse{}, nil
}

func (h authMethodService) ReadRole(ctx context.Context, req *sigilv1.ReadAuthRoleRequest) (*sigilv1.ReadAuthRoleResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	f, err := m.ReadRole(ctx, req.GetMount(), req.GetRole())
	if err != nil {
		return nil, core.OpError("read auth role", err)
	}
	return &sigilv1.ReadAuthRoleResponse{Fields: f}, nil
}

func (h authMethodService) ListRoles(ctx context.Context, req *sigilv1.ListAuthRolesRequest) (*sigilv1.ListAuthRolesResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	roles, err := m.ListRoles(ctx, req.GetMount())
	if err != nil {
		return nil, core.OpError("list auth roles", err)
	}
	return &sigilv1.ListAuthRolesResponse{Roles: roles}, nil
}

func (h authMethodService) DeleteRole(ctx context.Context, req *sigilv1.DeleteAuthRoleRequest) (*sigilv1.DeleteAuthRoleResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	if err := m.DeleteRole(ctx, req.GetMount(), req.GetRole()); err != nil {
		return nil, core.OpError("delete auth role", err)
	}
	return &sigilv1.DeleteAuthRoleResponse{}, nil
}

func (h authMethodService) WriteGroup(ctx context.Context, req *sigilv1.WriteAuthGroupRequest) (*sigilv1.WriteAuthGroupResponse, error) {
	m, err := h.manager()
	if err != nil {
		return nil, err
	}
	if err := m.WriteGroup(ctx, req.GetMount(), req.GetGroup(), req.GetFields()); err != nil {
		return nil, core.OpError("write auth group", err)
	}
	return &sigilv1.WriteAuthGroupResponse{}, nil
}

// loginSource names where a login came from, for per-source failure
// limiting: the client's IP address (its port changes per connection).
func loginSource(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	if host, _, err := net.SplitHostPort(p.Addr.String()); err == nil {
		return host
	}
	return p.Addr.String()
}

// Login implements AuthMethodService.Login.
func (h authMethodService) Login(ctx context.Context, req *sigilv1.AuthLoginRequest) (resp *sigilv1.AuthLoginResponse, err error) {
	a, err := h.s.core.Unsealed()
	if err != nil {
		return nil, err
	}
	var res *core.LoginResult
	secrets := map[string]audit.Value{"role": audit.Plain(req.GetRole())}
	if req.GetJwt() != "" {
		secrets["jwt"] = audit.Secret(req.GetJwt())
	}
	if req.GetUsername() != "" {
		secrets["username"] = audit.Plain(req.GetUsername())
	}
	defer func() { resp, err = h.audit(ctx, a, "login", req.GetMount(), secrets, res, resp, err) }()
	res, err = h.s.core.Login(ctx, loginSource(ctx), req.GetMount(), authmethod.Credentials{Role: req.GetRole(), JWT: req.GetJwt(),
		Username: req.GetUsername(), Password: req.GetPassword()}, recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, core.OpError("login", err)
	}
	return loginResponse(res), nil
}

// Callback implements AuthMethodService.Callback (OIDC browser login).
func (h authMethodService) Callback(ctx context.Context, req *sigilv1.AuthCallbackRequest) (resp *sigilv1.AuthLoginResponse, err error) {
	a, err := h.s.core.Unsealed()
	if err != nil {
		return nil, err
	}
	var res *core.LoginResult
	secrets := map[string]audit.Value{"state": audit.Secret(req.GetState()), "code": audit.Secret(req.GetCode())}
	defer func() { resp, err = h.audit(ctx, a, "callback", req.GetMount(), secrets, res, resp, err) }()
	res, err = h.s.core.Callback(ctx, loginSource(ctx), req.GetMount(), authmethod.Credentials{State: req.GetState(), Code: req.GetCode(),
		ClientNonce: req.GetClientNonce()}, recipientRef(req.GetRecipient()))
	if err != nil {
		return nil, core.OpError("oidc callback", err)
	}
	return loginResponse(res), nil
}

// AuthURL implements AuthMethodService.AuthURL. Starting a login grants
// nothing; the started logins a mount holds in memory are bounded, and a
// source blocked for failed logins cannot start one.
func (h authMethodService) AuthURL(ctx context.Context, req *sigilv1.AuthURLRequest) (*sigilv1.AuthURLResponse, error) {
	if _, err := h.s.core.Unsealed(); err != nil {
		return nil, err
	}
	u, err := h.s.core.AuthURL(ctx, loginSource(ctx), req.GetMount(), req.GetRole(), req.GetRedirectUri(), req.GetClientNonce())
	if err != nil {
		return nil, core.OpError("oidc auth url", err)
	}
	return &sigilv1.AuthURLResponse{AuthUrl: u}, nil
}

func loginResponse(res *core.LoginResult) *sigilv1.AuthLoginResponse {
	v := res.Verified
	return &sigilv1.AuthLoginResponse{Envelope: res.Delivery.Envelope, TokenId: res.Info.ID, Policies: v.Policies,
		ExpiresAtUnix: res.ExpiresAt.Unix(), LeaseId: res.LeaseID, Identity: v.Identity.Name, Metadata: v.Identity.Metadata}
}

// audit records a login attempt, successful or not: the credential only
// as an HMAC, the identity and policies on success, the reason on
// failure. When the record cannot be written the login fails.
func (h authMethodService) audit(ctx context.Context, a *core.Unsealed, op, mount string, req map[string]audit.Value,
	res *core.LoginResult, resp *sigilv1.AuthLoginResponse, err error) (*sigilv1.AuthLoginResponse, error) {
	rec := audit.Record{RequestID: requestIDFrom(ctx), Identity: "unauthenticated", AuthMethod: "auth/" + mount,
		Operation: "/sigil.v1.AuthMethodService/" + op, Path: "auth/" + mount + "/" + op,
		Decision: audit.Decision{Allowed: err == nil, Reason: "credential verified by auth method"}, Status: grpcCode(err).String(),
		Request: req}
	rec.Request["source"] = audit.Plain(loginSource(ctx))
	if res != nil {
		rec.Identity = "auth:" + mount + ":" + res.Verified.Identity.Name
		rec.AuthMethod = res.Verified.Type
		rec.LeaseIDs = []string{res.LeaseID}
		rec.Response = map[string]audit.Value{"token_id": audit.Plain(res.Info.ID), "policies": audit.Plain(strings.Join(res.Verified.Policies, ","))}
	}
	if err != nil {
		rec.Error, rec.Decision.Reason = publicMessage(err), "login refused"
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if aerr := h.s.core.Audit(actx, rec); aerr != nil {
		if res != nil {
			// A login nobody can account for must not leave a token behind.
			if rerr := a.Leases.Revoke(actx, res.LeaseID); rerr != nil {
				h.s.log.ErrorContext(ctx, "revoke the token of an unaudited login", "lease", res.LeaseID, "err", rerr)
			}
		}
		return nil, aerr
	}
	return resp, err
}
