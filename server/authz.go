package server

// The authorization table: every gRPC method the server registers has one
// entry saying how a call to it is authorised, and one interceptor
// (unaryAuthz) enforces it after authentication and before the handler. A
// method without an entry is refused (deny by default), and a test fails
// when a registered method has none.

import (
	"context"
	"fmt"
	"maps"
	"strings"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// authzKind is how a method is authorised.
type authzKind int

const (
	// authzPublic: no authentication at all (the call carries its own
	// credential in the body, or none is needed).
	authzPublic authzKind = iota + 1
	// authzAnyAuthenticated: every authenticated caller, for the stated
	// reason; the audit records that reason.
	authzAnyAuthenticated
	// authzPath: capability on the path computed from the request.
	authzPath
	// authzHandler: the path depends on stored state (a lease's owner, a
	// token's creator), so the handler decides with authorize, deny or
	// allowWithoutGrant; unaryAudit withholds any success without a
	// decision.
	authzHandler
)

func (k authzKind) String() string {
	switch k {
	case authzPublic:
		return "public"
	case authzAnyAuthenticated:
		return "any-authenticated"
	case authzPath:
		return "path"
	case authzHandler:
		return "handler"
	}
	return "unknown"
}

// authzRule is one entry of the table.
type authzRule struct {
	kind   authzKind
	reason string            // public, any-authenticated and handler entries
	cap    policy.Capability // path entries
	// path computes the policy path from the request; it refuses invalid
	// path components (mount or role names) with InvalidArgument.
	path func(req any) (string, error)
	// capFor, when set, picks the capability from the request instead of
	// cap (kv delete: the latest version, or given versions).
	capFor func(req any) policy.Capability
}

func public(reason string) authzRule { return authzRule{kind: authzPublic, reason: reason} }

func anyAuthenticated(reason string) authzRule {
	return authzRule{kind: authzAnyAuthenticated, reason: reason}
}

func handlerDecides(reason string) authzRule { return authzRule{kind: authzHandler, reason: reason} }

// fixed is capability c on a path that does not depend on the request.
func fixed(path string, c policy.Capability) authzRule {
	return authzRule{kind: authzPath, cap: c, path: func(any) (string, error) { return path, nil }}
}

// pathOf is capability c on the path f computes from a request of type T.
func pathOf[T any](c policy.Capability, f func(T) (string, error)) authzRule {
	return authzRule{kind: authzPath, cap: c, path: func(req any) (string, error) {
		r, ok := req.(T)
		if !ok {
			return "", errs.Errorf(errs.Internal, "authorization: request is %T", req)
		}
		return f(r)
	}}
}

// mountPath, roleOfMount and adminMount are core's policy paths
// (core/policypath.go), under the names table entries use.
func mountPath(mount string, rest ...string) (string, error) { return core.MountPath(mount, rest...) }

func roleOfMount(mount, sub, role string) (string, error) { return core.RolePath(mount, sub, role) }

func adminMount(mount, suffix string) (string, error) { return core.AdminMountPath(mount, suffix) }

type transitKeyReq interface {
	GetMount() string
	GetName() string
}

func transitRule[T transitKeyReq](sub string, c policy.Capability) authzRule {
	return pathOf(c, func(r T) (string, error) { return core.TransitKeyPath(r.GetMount(), sub, r.GetName()) })
}

// authzTable is the table; see authzKind. Health and reflection are
// public as whole services (authzLookup).
func authzTable() map[string]authzRule {
	const (
		hierarchy   = "sys/ca/hierarchy"
		caPublic    = "public CA information (certificates, CRLs): any authenticated caller"
		leaseAccess = "lease ownership: the handler checks the lease's owner or a sys/leases grant"
		// agentNodeScoped: node agents' calls.
		agentNodeScoped = "node-scoped: a caller authenticated by its node SVID, for entries parented to that node only"
	)
	t := map[string]authzRule{
		// Sys: status and the seal's own credentials.
		sigilv1.SysService_Status_FullMethodName:    public("seal status, which a sealed server must still give"),
		sigilv1.SysService_Init_FullMethodName:      public("init is open while uninitialised; core refuses it afterwards"),
		sigilv1.SysService_Unseal_FullMethodName:    public("the unseal share is the credential"),
		sigilv1.SysService_Seal_FullMethodName:      fixed("sys/seal", policy.Update),
		sigilv1.SysService_RotateKey_FullMethodName: fixed("sys/rotate", policy.Update),
		sigilv1.SysService_Rewrap_FullMethodName:    fixed("sys/rewrap", policy.Update),

		// CA.
		sigilv1.CAService_GetRoot_FullMethodName:     anyAuthenticated(caPublic),
		sigilv1.CAService_GetChain_FullMethodName:    anyAuthenticated(caPublic),
		sigilv1.CAService_GetCRL_FullMethodName:      anyAuthenticated(caPublic),
		sigilv1.CAService_ListIssuers_FullMethodName: anyAuthenticated(caPublic),
		// Create on ca/sign/PROFILE, except that a workload authenticated by
		// its SVID may renew its own SPIFFE ID (workload profile) without a
		// grant (core.Sign).
		sigilv1.CAService_Sign_FullMethodName: handlerDecides("create on ca/sign/PROFILE; a workload's own SVID renewal needs no grant"),
		sigilv1.CAService_SignIntermediate_FullMethodName: pathOf(policy.Create, func(r *sigilv1.SignIntermediateRequest) (string, error) {
			return "sys/ca/sign/" + core.IntermediateProfile(r.GetProfile()), nil
		}),
		sigilv1.CAService_Revoke_FullMethodName:                fixed("ca/revoke", policy.Update),
		sigilv1.CAService_RevokeIssuer_FullMethodName:          fixed(hierarchy, policy.Update),
		sigilv1.CAService_ListCertificates_FullMethodName:      fixed("ca/certs", policy.List),
		sigilv1.CAService_Init_FullMethodName:                  fixed(hierarchy, policy.Update),
		sigilv1.CAService_CreateIntermediateCSR_FullMethodName: fixed(hierarchy, policy.Update),
		sigilv1.CAService_ImportIntermediate_FullMethodName:    fixed(hierarchy, policy.Update),
		sigilv1.CAService_RotateIntermediate_FullMethodName:    fixed(hierarchy, policy.Update),

		// Policies.
		sigilv1.PolicyService_Write_FullMethodName: pathOf(policy.Update, func(r *sigilv1.WritePolicyRequest) (string, error) { return core.PolicyPath(r.GetName()) }),
		sigilv1.PolicyService_Read_FullMethodName:  pathOf(policy.Read, func(r *sigilv1.ReadPolicyRequest) (string, error) { return core.PolicyPath(r.GetName()) }),
		sigilv1.PolicyService_Delete_FullMethodName: pathOf(policy.Delete, func(r *sigilv1.DeletePolicyRequest) (string, error) {
			return core.PolicyPath(r.GetName())
		}),
		sigilv1.PolicyService_List_FullMethodName: fixed("sys/policies", policy.List),
		sigilv1.PolicyService_Test_FullMethodName: fixed("sys/policies", policy.Read),

		// API tokens. Create is also bounded by delegation (the creator's
		// own policies, TTL and uses; sys/tokens/root for root), which the
		// handler applies on top.
		sigilv1.TokenService_Create_FullMethodName: fixed("sys/tokens", policy.Create),
		sigilv1.TokenService_Lookup_FullMethodName: handlerDecides("a token may look itself up; another token needs read on sys/tokens/ID"),
		sigilv1.TokenService_Revoke_FullMethodName: pathOf(policy.Delete, func(r *sigilv1.RevokeTokenRequest) (string, error) {
			return core.TokenPath(r.GetId())
		}),

		// Token renewal (h/renew): a token may renew itself, like Vault's
		// renew-self; another token needs update on sys/tokens/ID.
		sigilv1.TokenService_Renew_FullMethodName: handlerDecides("a token may renew itself; another token needs update on sys/tokens/ID"),

		// Audit.
		sigilv1.AuditService_Verify_FullMethodName: fixed("sys/audit", policy.Read),
		sigilv1.AuditService_Hash_FullMethodName:   fixed("sys/audit", policy.Read),

		// ACME administration.
		sigilv1.ACMEService_CreateEAB_FullMethodName:         fixed("sys/acme/eab", policy.Create),
		sigilv1.ACMEService_ListEAB_FullMethodName:           fixed("sys/acme/eab", policy.List),
		sigilv1.ACMEService_RevokeEAB_FullMethodName:         fixed("sys/acme/eab", policy.Delete),
		sigilv1.ACMEService_ListAccounts_FullMethodName:      fixed("sys/acme/accounts", policy.List),
		sigilv1.ACMEService_DeactivateAccount_FullMethodName: fixed("sys/acme/accounts", policy.Update),

		// Engines.
		sigilv1.EngineService_Enable_FullMethodName: pathOf(policy.Create, func(r *sigilv1.EnableEngineRequest) (string, error) { return adminMount(r.GetMount(), "") }),
		sigilv1.EngineService_List_FullMethodName:   fixed("sys/mounts", policy.List),
		sigilv1.EngineService_Disable_FullMethodName: pathOf(policy.Delete, func(r *sigilv1.DisableEngineRequest) (string, error) {
			return adminMount(r.GetMount(), "")
		}),
		sigilv1.EngineService_Configure_FullMethodName: pathOf(policy.Update, func(r *sigilv1.ConfigureEngineRequest) (string, error) {
			return adminMount(r.GetMount(), "")
		}),
		sigilv1.EngineService_RotateRoot_FullMethodName: pathOf(policy.Update, func(r *sigilv1.RotateRootRequest) (string, error) {
			return adminMount(r.GetMount(), "")
		}),
		sigilv1.EngineService_WriteRole_FullMethodName: pathOf(policy.Update, func(r *sigilv1.WriteRoleRequest) (string, error) {
			return core.AdminRolePath(r.GetMount(), r.GetRole())
		}),
		sigilv1.EngineService_ReadRole_FullMethodName: pathOf(policy.Read, func(r *sigilv1.ReadRoleRequest) (string, error) {
			return core.AdminRolePath(r.GetMount(), r.GetRole())
		}),
		sigilv1.EngineService_DeleteRole_FullMethodName: pathOf(policy.Delete, func(r *sigilv1.DeleteRoleRequest) (string, error) {
			return core.AdminRolePath(r.GetMount(), r.GetRole())
		}),
		sigilv1.EngineService_ListRoles_FullMethodName: pathOf(policy.List, func(r *sigilv1.ListRolesRequest) (string, error) {
			return adminMount(r.GetMount(), "/roles")
		}),
		sigilv1.EngineService_Creds_FullMethodName: pathOf(policy.Read, func(r *sigilv1.CredsRequest) (string, error) {
			return roleOfMount(r.GetMount(), "creds", r.GetRole())
		}),

		// Leases.
		sigilv1.LeaseService_List_FullMethodName:   fixed("sys/leases", policy.List),
		sigilv1.LeaseService_Lookup_FullMethodName: handlerDecides(leaseAccess),
		sigilv1.LeaseService_Renew_FullMethodName:  handlerDecides(leaseAccess),
		sigilv1.LeaseService_Revoke_FullMethodName: handlerDecides(leaseAccess + "; a prefix or force revoke needs sys/leases/revoke-prefix|revoke-force"),

		// Wrapping, identity, token introspection, SSH.
		sigilv1.WrapService_Unwrap_FullMethodName:     public("the single-use wrapping token is the credential"),
		sigilv1.IdentityService_Enroll_FullMethodName: public("the single-use join token is the credential"),
		sigilv1.IdentityService_CreateJoinToken_FullMethodName: pathOf(policy.Create, func(r *sigilv1.CreateJoinTokenRequest) (string, error) {
			if err := core.ValidSPIFFEID(r.GetSpiffeId()); err != nil {
				return "", err
			}
			return "sys/identity/join-tokens", nil
		}),
		// Key-value secrets, with Vault KV v2's paths: MOUNT/data/PATH
		// (read, update; delete for the latest version), MOUNT/metadata/PATH,
		// MOUNT/delete|undelete|destroy/PATH (update).
		sigilv1.KVService_Put_FullMethodName:            kvRule[*sigilv1.KVWriteRequest]("data", policy.Update),
		sigilv1.KVService_Patch_FullMethodName:          kvRule[*sigilv1.KVWriteRequest]("data", policy.Update),
		sigilv1.KVService_Get_FullMethodName:            kvRule[*sigilv1.KVGetRequest]("data", policy.Read),
		sigilv1.KVService_Rollback_FullMethodName:       kvRule[*sigilv1.KVRollbackRequest]("data", policy.Update),
		sigilv1.KVService_Delete_FullMethodName:         kvDeleteRule(),
		sigilv1.KVService_Undelete_FullMethodName:       kvRule[*sigilv1.KVVersionsRequest]("undelete", policy.Update),
		sigilv1.KVService_Destroy_FullMethodName:        kvRule[*sigilv1.KVVersionsRequest]("destroy", policy.Update),
		sigilv1.KVService_ReadMetadata_FullMethodName:   kvRule[*sigilv1.KVPathRequest]("metadata", policy.Read),
		sigilv1.KVService_WriteMetadata_FullMethodName:  kvRule[*sigilv1.KVWriteMetadataRequest]("metadata", policy.Update),
		sigilv1.KVService_DeleteMetadata_FullMethodName: kvRule[*sigilv1.KVPathRequest]("metadata", policy.Delete),
		sigilv1.KVService_List_FullMethodName: pathOf(policy.List, func(r *sigilv1.KVListRequest) (string, error) {
			return core.KVListPath(r.GetMount(), r.GetPrefix())
		}),

		sigilv1.TokensService_Introspect_FullMethodName: handlerDecides("the mount is read from the token: read on MOUNT/introspect; a malformed token is inactive without a grant"),
		sigilv1.SSHService_Sign_FullMethodName: pathOf(policy.Update, func(r *sigilv1.SSHSignRequest) (string, error) {
			return roleOfMount(r.GetMount(), "sign", r.GetRole())
		}),

		// Node agents (sigil agent): registration entries for operators on
		// sys/agent/entries/TRUST-DOMAIN/PATH of the entry's SPIFFE ID; the
		// agent-facing methods are node-scoped in core (the entry must be
		// parented to the SPIFFE ID Sigil recorded for the caller's SVID).
		sigilv1.AgentService_CreateEntry_FullMethodName: pathOf(policy.Create, func(r *sigilv1.CreateEntryRequest) (string, error) {
			return core.AgentEntryPath(r.GetSpiffeId())
		}),
		sigilv1.AgentService_ListEntries_FullMethodName:  fixed(core.AgentEntriesPath, policy.List),
		sigilv1.AgentService_DeleteEntry_FullMethodName:  handlerDecides("delete on the stored entry's sys/agent/entries path"),
		sigilv1.AgentService_FetchEntries_FullMethodName: handlerDecides(agentNodeScoped),
		sigilv1.AgentService_MintX509SVID_FullMethodName: handlerDecides(agentNodeScoped),
		sigilv1.AgentService_MintJWTSVID_FullMethodName:  handlerDecides(agentNodeScoped),
		sigilv1.AgentService_GetBundle_FullMethodName:    anyAuthenticated("the trust bundle is public: any authenticated caller"),
		// Cluster (issue 18): the member list names every node's addresses.
		sigilv1.ClusterService_Members_FullMethodName: fixed("sys/cluster/members", policy.Read),

		// Transit.
		sigilv1.TransitService_CreateKey_FullMethodName:    transitRule[*sigilv1.TransitKeyRequest]("keys", policy.Create),
		sigilv1.TransitService_RotateKey_FullMethodName:    transitRule[*sigilv1.TransitKeyRequest]("keys", policy.Update),
		sigilv1.TransitService_ConfigureKey_FullMethodName: transitRule[*sigilv1.ConfigureTransitKeyRequest]("keys", policy.Update),
		sigilv1.TransitService_ReadKey_FullMethodName:      transitRule[*sigilv1.TransitKeyRequest]("keys", policy.Read),
		sigilv1.TransitService_DeleteKey_FullMethodName:    transitRule[*sigilv1.TransitKeyRequest]("keys", policy.Delete),
		sigilv1.TransitService_ListKeys_FullMethodName: pathOf(policy.List, func(r *sigilv1.ListTransitKeysRequest) (string, error) {
			return mountPath(r.GetMount(), "keys")
		}),
		sigilv1.TransitService_Encrypt_FullMethodName:    transitRule[*sigilv1.TransitBatchRequest]("encrypt", policy.Update),
		sigilv1.TransitService_Decrypt_FullMethodName:    transitRule[*sigilv1.TransitBatchRequest]("decrypt", policy.Update),
		sigilv1.TransitService_Rewrap_FullMethodName:     transitRule[*sigilv1.TransitBatchRequest]("rewrap", policy.Update),
		sigilv1.TransitService_DataKey_FullMethodName:    transitRule[*sigilv1.DataKeyRequest]("datakey", policy.Update),
		sigilv1.TransitService_Sign_FullMethodName:       transitRule[*sigilv1.TransitSignRequest]("sign", policy.Update),
		sigilv1.TransitService_Verify_FullMethodName:     transitRule[*sigilv1.TransitVerifyRequest]("verify", policy.Update),
		sigilv1.TransitService_HMAC_FullMethodName:       transitRule[*sigilv1.TransitSignRequest]("hmac", policy.Update),
		sigilv1.TransitService_VerifyHMAC_FullMethodName: transitRule[*sigilv1.TransitVerifyRequest]("verify-hmac", policy.Update),

		// Snapshots (deploy): the whole database, sealed. Read on a sys/
		// path, so sudo too, like Vault's sys/storage/raft/snapshot.
		sigilv1.SnapshotService_Save_FullMethodName: fixed(snapshotPath, policy.Read),
	}
	maps.Copy(t, authMethodAuthz())
	return t
}

// authMethodAuthz is the auth methods' block of the table (issue 17):
// administration under sys/auth/MOUNT, logins public (the credential is in
// the request; size-limited, failures rate-limited per source, audited by
// the handler).
func authMethodAuthz() map[string]authzRule {
	mountOf := func(m string) (string, error) {
		if err := authmethod.CheckMountName(m); err != nil {
			return "", err
		}
		return "sys/auth/" + m, nil
	}
	named := func(m, sub, kind, name string) (string, error) {
		p, err := mountOf(m)
		if err != nil {
			return "", err
		}
		if err := authmethod.CheckName(kind, name); err != nil {
			return "", err
		}
		return p + "/" + sub + "/" + name, nil
	}
	const login = "the credential (JWT, password, OIDC code) is in the request; failures are rate-limited per source and audited"
	return map[string]authzRule{
		sigilv1.AuthMethodService_Enable_FullMethodName: pathOf(policy.Create, func(r *sigilv1.EnableAuthRequest) (string, error) { return mountOf(r.GetMount()) }),
		sigilv1.AuthMethodService_List_FullMethodName:   fixed("sys/auth", policy.List),
		sigilv1.AuthMethodService_Disable_FullMethodName: pathOf(policy.Delete, func(r *sigilv1.DisableAuthRequest) (string, error) {
			return mountOf(r.GetMount())
		}),
		sigilv1.AuthMethodService_Configure_FullMethodName: pathOf(policy.Update, func(r *sigilv1.ConfigureAuthRequest) (string, error) {
			p, err := mountOf(r.GetMount())
			return p + "/config", err
		}),
		sigilv1.AuthMethodService_WriteRole_FullMethodName: pathOf(policy.Update, func(r *sigilv1.WriteAuthRoleRequest) (string, error) {
			return named(r.GetMount(), "roles", "role", r.GetRole())
		}),
		sigilv1.AuthMethodService_ReadRole_FullMethodName: pathOf(policy.Read, func(r *sigilv1.ReadAuthRoleRequest) (string, error) {
			return named(r.GetMount(), "roles", "role", r.GetRole())
		}),
		sigilv1.AuthMethodService_DeleteRole_FullMethodName: pathOf(policy.Delete, func(r *sigilv1.DeleteAuthRoleRequest) (string, error) {
			return named(r.GetMount(), "roles", "role", r.GetRole())
		}),
		sigilv1.AuthMethodService_ListRoles_FullMethodName: pathOf(policy.List, func(r *sigilv1.ListAuthRolesRequest) (string, error) {
			p, err := mountOf(r.GetMount())
			return p + "/roles", err
		}),
		sigilv1.AuthMethodService_WriteGroup_FullMethodName: pathOf(policy.Update, func(r *sigilv1.WriteAuthGroupRequest) (string, error) {
			return named(r.GetMount(), "groups", "group", r.GetGroup())
		}),
		sigilv1.AuthMethodService_Login_FullMethodName:    public(login),
		sigilv1.AuthMethodService_Callback_FullMethodName: public(login),
		sigilv1.AuthMethodService_AuthURL_FullMethodName:  public("starting a browser login grants nothing; the login is finished by Callback"),
	}
}

// authzLookup returns method's rule, and false when it has none. Health
// and reflection are infrastructure services, public as a whole.
func (s *Server) authzLookup(method string) (authzRule, bool) {
	if strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.") {
		return public("health checks and reflection"), true
	}
	r, ok := s.authz[method]
	return r, ok
}

// publicMethod reports whether method is answered without authentication.
func (s *Server) publicMethod(method string) bool {
	r, ok := s.authzLookup(method)
	return ok && r.kind == authzPublic
}

// authorizeCall applies method's rule to an authenticated call.
func (s *Server) authorizeCall(ctx context.Context, method string, req any) error {
	rule, ok := s.authzLookup(method)
	if !ok {
		// Deny by default: a method nobody classified is nobody's.
		s.log.ErrorContext(ctx, "BUG: method has no authorization table entry; refused", "method", method)
		return s.deny(ctx, "", fmt.Sprintf("method %s has no authorization rule", method))
	}
	switch rule.kind {
	case authzPublic, authzHandler:
		return nil // a handler rule: the handler decides, unaryAudit checks it did
	case authzAnyAuthenticated:
		s.allowWithoutGrant(ctx, "", rule.reason)
		return nil
	}
	c := rule.cap
	if rule.capFor != nil {
		c = rule.capFor(req)
	}
	path, err := rule.path(req)
	if err != nil {
		return err
	}
	return s.authorize(ctx, path, c)
}

// unaryAuthz enforces the table: after authentication (and the audit
// interceptor, which records the decision), before the handler.
func (s *Server) unaryAuthz(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !s.publicMethod(info.FullMethod) {
		if requestFrom(ctx) == nil {
			return nil, errs.New(errs.Unauthenticated, "authentication required")
		}
		if err := s.authorizeCall(ctx, info.FullMethod, req); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// streamAuthz is unaryAuthz for streaming methods, which carry no request
// to compute a path from: public, any-authenticated and fixed-path rules
// (a request-dependent path refuses the nil request).
func (s *Server) streamAuthz(ctx context.Context, method string) error {
	rule, ok := s.authzLookup(method)
	if ok && (rule.kind == authzPublic || rule.kind == authzAnyAuthenticated) {
		return nil
	}
	if ok && rule.kind == authzPath && rule.capFor == nil {
		path, err := rule.path(nil)
		if err != nil {
			return err
		}
		if err := s.authorize(ctx, path, rule.cap); err != nil {
			if aerr := s.auditStreamCall(ctx, method, path, err); aerr != nil {
				return aerr
			}
			return err
		}
		return nil
	}
	return errs.Errorf(errs.PermissionDenied, "permission denied: streaming method %s has no authorization rule", method)
}

type kvPathReq interface {
	GetMount() string
	GetPath() string
}

func kvRule[T kvPathReq](sub string, c policy.Capability) authzRule {
	return pathOf(c, func(r T) (string, error) { return core.KVPath(r.GetMount(), sub, r.GetPath()) })
}

// kvDeleteRule: the path and capability depend on whether versions are
// given (core.KVDelete).
func kvDeleteRule() authzRule {
	rule := pathOf(policy.Delete, func(r *sigilv1.KVVersionsRequest) (string, error) {
		p, _, err := core.KVDelete(r.GetMount(), r.GetPath(), len(r.GetVersions()) > 0)
		return p, err
	})
	rule.capFor = func(req any) policy.Capability {
		r, _ := req.(*sigilv1.KVVersionsRequest)
		_, c, _ := core.KVDelete(r.GetMount(), r.GetPath(), len(r.GetVersions()) > 0)
		return c
	}
	return rule
}
