package server

import (
	"context"

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

func (h authMethodService) Enable(ctx context.Context, req *sigilv1.EnableAuthRequest) (*sigilv1.EnableAuthResponse, error) {
	return onUnsealed(h.s, "enable auth method", func(u *core.Unsealed) (*sigilv1.EnableAuthResponse, error) {
		return &sigilv1.EnableAuthResponse{}, u.AuthMethods.Enable(ctx, req.GetMount(), req.GetType())
	})
}

func (h authMethodService) List(ctx context.Context, _ *sigilv1.ListAuthRequest) (*sigilv1.ListAuthResponse, error) {
	return onUnsealed(h.s, "list auth methods", func(u *core.Unsealed) (*sigilv1.ListAuthResponse, error) {
		list, err := u.AuthMethods.List(ctx)
		out := &sigilv1.ListAuthResponse{}
		for _, mt := range list {
			out.Mounts = append(out.Mounts, &sigilv1.AuthMountInfo{Mount: mt.Name, Type: mt.Type, Configured: mt.Configured, Roles: int32(mt.Roles)})
		}
		return out, err
	})
}

func (h authMethodService) Disable(ctx context.Context, req *sigilv1.DisableAuthRequest) (*sigilv1.DisableAuthResponse, error) {
	n, err := h.s.core.DisableAuth(ctx, req.GetMount())
	if err != nil {
		return nil, core.OpError("disable auth method", err)
	}
	return &sigilv1.DisableAuthResponse{RevokedTokens: int64(n)}, nil
}

func (h authMethodService) Configure(ctx context.Context, req *sigilv1.ConfigureAuthRequest) (*sigilv1.ConfigureAuthResponse, error) {
	return onUnsealed(h.s, "configure auth method", func(u *core.Unsealed) (*sigilv1.ConfigureAuthResponse, error) {
		return &sigilv1.ConfigureAuthResponse{}, u.AuthMethods.Configure(ctx, req.GetMount(), req.GetConfig())
	})
}

func (h authMethodService) WriteRole(ctx context.Context, req *sigilv1.WriteAuthRoleRequest) (*sigilv1.WriteAuthRoleResponse, error) {
	return onUnsealed(h.s, "write auth role", func(u *core.Unsealed) (*sigilv1.WriteAuthRoleResponse, error) {
		return &sigilv1.WriteAuthRoleResponse{}, u.AuthMethods.WriteRole(ctx, req.GetMount(), req.GetRole(), req.GetFields())
	})
}

func (h authMethodService) ReadRole(ctx context.Context, req *sigilv1.ReadAuthRoleRequest) (*sigilv1.ReadAuthRoleResponse, error) {
	return onUnsealed(h.s, "read auth role", func(u *core.Unsealed) (*sigilv1.ReadAuthRoleResponse, error) {
		f, err := u.AuthMethods.ReadRole(ctx, req.GetMount(), req.GetRole())
		return &sigilv1.ReadAuthRoleResponse{Fields: f}, err
	})
}

func (h authMethodService) ListRoles(ctx context.Context, req *sigilv1.ListAuthRolesRequest) (*sigilv1.ListAuthRolesResponse, error) {
	return onUnsealed(h.s, "list auth roles", func(u *core.Unsealed) (*sigilv1.ListAuthRolesResponse, error) {
		roles, err := u.AuthMethods.ListRoles(ctx, req.GetMount())
		return &sigilv1.ListAuthRolesResponse{Roles: roles}, err
	})
}

func (h authMethodService) DeleteRole(ctx context.Context, req *sigilv1.DeleteAuthRoleRequest) (*sigilv1.DeleteAuthRoleResponse, error) {
	return onUnsealed(h.s, "delete auth role", func(u *core.Unsealed) (*sigilv1.DeleteAuthRoleResponse, error) {
		return &sigilv1.DeleteAuthRoleResponse{}, u.AuthMethods.DeleteRole(ctx, req.GetMount(), req.GetRole())
	})
}

func (h authMethodService) WriteGroup(ctx context.Context, req *sigilv1.WriteAuthGroupRequest) (*sigilv1.WriteAuthGroupResponse, error) {
	return onUnsealed(h.s, "write auth group", func(u *core.Unsealed) (*sigilv1.WriteAuthGroupResponse, error) {
		return &sigilv1.WriteAuthGroupResponse{}, u.AuthMethods.WriteGroup(ctx, req.GetMount(), req.GetGroup(), req.GetFields())
	})
}

// loginSource names where a login came from, for per-source failure
// limiting (peerSource).
func loginSource(ctx context.Context) string {
	if s := peerSource(ctx); s != "" {
		return s
	}
	return "unknown"
}

// Login implements AuthMethodService.Login; core audits every attempt.
func (h authMethodService) Login(ctx context.Context, req *sigilv1.AuthLoginRequest) (*sigilv1.AuthLoginResponse, error) {
	return wire(loginResponse)(h.s.core.AuditedLogin(ctx, h.s.attempt(ctx), req.GetMount(), authmethod.Credentials{Role: req.GetRole(),
		JWT: req.GetJwt(), Username: req.GetUsername(), Password: req.GetPassword()}, recipientRef(req.GetRecipient())))
}

// Callback implements AuthMethodService.Callback (OIDC browser login).
func (h authMethodService) Callback(ctx context.Context, req *sigilv1.AuthCallbackRequest) (*sigilv1.AuthLoginResponse, error) {
	return wire(loginResponse)(h.s.core.AuditedCallback(ctx, h.s.attempt(ctx), req.GetMount(), authmethod.Credentials{State: req.GetState(),
		Code: req.GetCode(), ClientNonce: req.GetClientNonce()}, recipientRef(req.GetRecipient())))
}

// AuthURL implements AuthMethodService.AuthURL. Starting a login grants
// nothing; the started logins a mount keeps (sealed, in storage, until
// their callback or expiry) are bounded, each source may start only so
// many, and a source blocked for failed logins cannot start one.
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
