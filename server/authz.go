package server

// The authorization table: every gRPC method the server registers has one
// entry saying how a call to it is authorised and how large its request may
// be, declared on the rpc itself as option (sigil.v1.access)
// (proto/sigil/v1/authz.proto) and read from the descriptors once at
// start. One interceptor (unaryAuthz) enforces it after authentication and
// before the handler. A method without an entry is refused (deny by
// default), and a test fails when a registered method has none.

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// authzRule is one entry of the table.
type authzRule struct {
	kind   sigilv1.Access_Kind // what each kind means: proto/sigil/v1/authz.proto
	reason string              // public, any-authenticated and handler entries
	cap    policy.Capability   // path entries
	// path computes the policy path from the request; it refuses invalid
	// path components (mount or role names) with InvalidArgument.
	path func(req any) (string, error)
	// capFor, when set, picks the capability from the request instead of
	// cap (kv delete: the latest version, or given versions).
	capFor func(req any) policy.Capability
	// maxRequest is the largest request accepted (checkRequestSize).
	maxRequest int
}

// authzTable reads the table from the methods' access options. A method
// without one has no entry and is refused. The options are compiled in,
// so a malformed one is a bug every test that starts a server finds: it
// panics rather than serve a table that is not the declared one.
func authzTable() map[string]authzRule {
	t := map[string]authzRule{}
	overrides := authzOverrides()
	protoregistry.GlobalFiles.RangeFilesByPackage("sigil.v1", func(f protoreflect.FileDescriptor) bool {
		for i := range f.Services().Len() {
			svc := f.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				a, _ := proto.GetExtension(m.Options(), sigilv1.E_Access).(*sigilv1.Access)
				if a.GetKind() == sigilv1.Access_KIND_UNSPECIFIED {
					continue
				}
				name := "/" + string(svc.FullName()) + "/" + string(m.Name())
				o, hasOverride := overrides[name]
				delete(overrides, name)
				r, err := ruleOf(a, m.Input(), o, hasOverride)
				if err != nil {
					panic(fmt.Sprintf("authorization option of %s: %v", name, err))
				}
				t[name] = r
			}
		}
		return true
	})
	if len(overrides) > 0 {
		panic(fmt.Sprintf("authorization overrides for methods without an access option: %v", slices.Collect(maps.Keys(overrides))))
	}
	return t
}

// ruleOf is the rule an access option declares for a method taking input.
func ruleOf(a *sigilv1.Access, input protoreflect.MessageDescriptor, override authzRule, hasOverride bool) (authzRule, error) {
	r := authzRule{reason: a.GetReason(), maxRequest: defaultMaxRequest}
	if n := a.GetMaxRequestBytes(); n != 0 {
		if n < 0 || n > maxGRPCMessage {
			return r, fmt.Errorf("max_request_bytes %d is outside 1..%d", n, maxGRPCMessage)
		}
		r.maxRequest = int(n)
	}
	if r.kind = a.GetKind(); r.kind != sigilv1.Access_PATH {
		if r.reason == "" || a.GetPath() != "" || a.GetCapability() != "" || hasOverride {
			return r, fmt.Errorf("%v: wants a reason and no path, capability or override", a.GetKind())
		}
		return r, nil
	}
	c := policy.Capability(a.GetCapability())
	if !slices.Contains([]policy.Capability{policy.Read, policy.Create, policy.Update, policy.Delete, policy.List}, c) || r.reason != "" {
		return r, fmt.Errorf("capability %q (want read, create, update, delete or list) and no reason", c)
	}
	if a.GetOverride() != hasOverride || (hasOverride && override.cap != c) {
		return r, fmt.Errorf("override %v, but the server has %v for capability %q", a.GetOverride(), hasOverride, override.cap)
	}
	if hasOverride {
		override.maxRequest = r.maxRequest
		return override, nil
	}
	tmpl, err := core.ParsePathTemplate(a.GetPath())
	if err != nil {
		return r, err
	}
	fields := map[string]protoreflect.FieldDescriptor{}
	for _, name := range tmpl.Fields() {
		fd := input.Fields().ByName(protoreflect.Name(name))
		if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated {
			return r, fmt.Errorf("path %q: %s has no string field %s", a.GetPath(), input.FullName(), name)
		}
		fields[name] = fd
	}
	r.cap = c
	r.path = func(req any) (string, error) {
		if len(fields) == 0 {
			return tmpl.Expand(nil) // a fixed path: streaming calls have no request
		}
		m, ok := req.(proto.Message)
		if !ok || m.ProtoReflect().Descriptor() != input {
			return "", errs.Errorf(errs.Internal, "authorization: request is %T", req)
		}
		msg := m.ProtoReflect()
		return tmpl.Expand(func(name string) string { return msg.Get(fields[name]).String() })
	}
	return r, nil
}

// authzOverrides are the few path entries whose option says override:
// a template cannot say what they check.
func authzOverrides() map[string]authzRule {
	return map[string]authzRule{
		sigilv1.KVService_Delete_FullMethodName: kvDeleteRule(),
		sigilv1.CAService_SignIntermediate_FullMethodName: pathOf(policy.Create, func(r *sigilv1.SignIntermediateRequest) (string, error) {
			p := core.IntermediateProfile(r.GetProfile())
			return "sys/ca/sign/" + p, core.CheckProfileName(p)
		}),
		sigilv1.IdentityService_CreateJoinToken_FullMethodName: pathOf(policy.Create, func(r *sigilv1.CreateJoinTokenRequest) (string, error) {
			if err := core.ValidSPIFFEID(r.GetSpiffeId()); err != nil {
				return "", err
			}
			return "sys/identity/join-tokens", nil
		}),
	}
}

// pathOf is capability c on the path f computes from a request of type T.
func pathOf[T any](c policy.Capability, f func(T) (string, error)) authzRule {
	return authzRule{kind: sigilv1.Access_PATH, cap: c, path: func(req any) (string, error) {
		r, ok := req.(T)
		if !ok {
			return "", errs.Errorf(errs.Internal, "authorization: request is %T", req)
		}
		return f(r)
	}}
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

// authzLookup returns method's rule, and false when it has none.
func (s *Server) authzLookup(method string) (authzRule, bool) { return lookupRule(s.authz, method) }

// lookupRule finds method in table t. Health and reflection are
// infrastructure services, public as a whole; a health check is small.
func lookupRule(t map[string]authzRule, method string) (authzRule, bool) {
	if strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.") {
		r := authzRule{kind: sigilv1.Access_PUBLIC, reason: "health checks and reflection", maxRequest: defaultMaxRequest}
		if method == healthpb.Health_Check_FullMethodName || method == healthpb.Health_Watch_FullMethodName {
			r.maxRequest = 1 << 10 // empty, or a service name
		}
		return r, true
	}
	r, ok := t[method]
	return r, ok
}

// publicMethod reports whether method is answered without authentication.
func (s *Server) publicMethod(method string) bool {
	r, ok := s.authzLookup(method)
	return ok && r.kind == sigilv1.Access_PUBLIC
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
	case sigilv1.Access_PUBLIC, sigilv1.Access_HANDLER:
		return nil // a handler rule: the handler decides, unaryAudit checks it did
	case sigilv1.Access_ANY_AUTHENTICATED:
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
	if ok && (rule.kind == sigilv1.Access_PUBLIC || rule.kind == sigilv1.Access_ANY_AUTHENTICATED) {
		return nil
	}
	if ok && rule.kind == sigilv1.Access_PATH && rule.capFor == nil {
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
