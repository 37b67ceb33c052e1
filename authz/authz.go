// Package authz is the method authorization table: every gRPC method the
// server registers has one entry saying how a call to it is authorised and
// how large its request may be, declared on the rpc itself as option
// (sigil.v1.access) (proto/sigil/v1/authz.proto), read from the descriptors
// once at start (Load), and applied to a request (Check, CheckStream,
// CheckSize). The server's interceptors call it after authentication and
// before the handler. A method without an entry is refused (deny by
// default), and a test fails when a registered method has none.
//
// The path templates the options use are in core/policypath.go.
package authz

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// DefaultMaxRequest bounds every method whose access option sets no
// max_request_bytes.
const DefaultMaxRequest = 64 << 10

// Rule is one entry of the table.
type Rule struct {
	Kind   sigilv1.Access_Kind // what each kind means: proto/sigil/v1/authz.proto
	Reason string              // public, any-authenticated and handler entries
	// Capability is what a path entry needs; the kv delete entry picks it
	// from the request instead (Resolve).
	Capability policy.Capability
	// MaxRequest is the largest request accepted (CheckSize).
	MaxRequest int

	// path computes the policy path from the request; it refuses invalid
	// path components (mount or role names) with InvalidArgument.
	path func(req any) (string, error)
	// capFor, when set, picks the capability from the request instead of
	// Capability (kv delete: the latest version, or given versions).
	capFor func(req any) policy.Capability
}

// Resolve is the policy path and capability a path entry checks for req,
// or the error req is refused with (an invalid path component). Other
// kinds check no path: "", "", nil.
func (r Rule) Resolve(req any) (string, policy.Capability, error) {
	if r.Kind != sigilv1.Access_PATH {
		return "", "", nil
	}
	c := r.Capability
	if r.capFor != nil {
		c = r.capFor(req)
	}
	path, err := r.path(req)
	if err != nil {
		return "", "", err
	}
	return path, c, nil
}

// Table is the authorization table, read once by Load and not changed
// after: safe for concurrent use.
type Table struct {
	rules map[string]Rule
	log   *slog.Logger
}

// Load reads the table from the access options of the sigil.v1 methods
// linked into the binary. A method without one has no entry and is
// refused. maxMessage is the largest request the transport reads at all: a
// max_request_bytes above it is refused. The options are compiled in, so a
// malformed one is a bug every test that starts a server finds: Load
// refuses it rather than return a table that is not the declared one. log
// receives the BUG line of a call to a method without an entry (nil: no
// log).
func Load(log *slog.Logger, maxMessage int) (*Table, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Table{rules: map[string]Rule{}, log: log}
	overrides := overrides()
	var err error
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
				r, rerr := ruleOf(a, m.Input(), o, hasOverride, maxMessage)
				if rerr != nil {
					err = fmt.Errorf("authorization option of %s: %w", name, rerr)
					return false
				}
				t.rules[name] = r
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if len(overrides) > 0 {
		keys := slices.Sorted(maps.Keys(overrides))
		return nil, fmt.Errorf("authorization overrides for methods without an access option: %v", keys)
	}
	return t, nil
}

// ruleOf is the rule an access option declares for a method taking input;
// override is the Go rule of a method whose option says override.
func ruleOf(a *sigilv1.Access, input protoreflect.MessageDescriptor, override Rule, hasOverride bool, maxMessage int) (Rule, error) {
	r := Rule{Reason: a.GetReason(), MaxRequest: DefaultMaxRequest}
	if n := a.GetMaxRequestBytes(); n != 0 {
		if n < 0 || n > int64(maxMessage) {
			return r, fmt.Errorf("max_request_bytes %d is outside 1..%d", n, maxMessage)
		}
		r.MaxRequest = int(n)
	}
	if r.Kind = a.GetKind(); r.Kind != sigilv1.Access_PATH {
		if r.Reason == "" || a.GetPath() != "" || a.GetCapability() != "" || hasOverride {
			return r, fmt.Errorf("%v: wants a reason and no path, capability or override", a.GetKind())
		}
		return r, nil
	}
	c := policy.Capability(a.GetCapability())
	if !slices.Contains([]policy.Capability{policy.Read, policy.Create, policy.Update, policy.Delete, policy.List}, c) || r.Reason != "" {
		return r, fmt.Errorf("capability %q (want read, create, update, delete or list) and no reason", c)
	}
	if a.GetOverride() != hasOverride || (hasOverride && override.Capability != c) {
		return r, fmt.Errorf("override %v, but the server has %v for capability %q", a.GetOverride(), hasOverride, override.Capability)
	}
	if hasOverride {
		override.MaxRequest = r.MaxRequest
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
	r.Capability = c
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

// overrides are the few path entries whose option says override: a
// template cannot say what they check.
func overrides() map[string]Rule {
	return map[string]Rule{
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
func pathOf[T any](c policy.Capability, f func(T) (string, error)) Rule {
	return Rule{Kind: sigilv1.Access_PATH, Capability: c, path: func(req any) (string, error) {
		r, ok := req.(T)
		if !ok {
			return "", errs.Errorf(errs.Internal, "authorization: request is %T", req)
		}
		return f(r)
	}}
}

// kvDeleteRule: the path and capability depend on whether versions are
// given (core.KVDelete).
func kvDeleteRule() Rule {
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

// Rule returns method's rule, and false when it has none. Health and
// reflection are infrastructure services, public as a whole; a health
// check is small.
func (t *Table) Rule(method string) (Rule, bool) {
	if strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.") {
		r := Rule{Kind: sigilv1.Access_PUBLIC, Reason: "health checks and reflection", MaxRequest: DefaultMaxRequest}
		if method == healthpb.Health_Check_FullMethodName || method == healthpb.Health_Watch_FullMethodName {
			r.MaxRequest = 1 << 10 // empty, or a service name
		}
		return r, true
	}
	r, ok := t.rules[method]
	return r, ok
}

// Methods lists the methods the table has an entry for (health and
// reflection, public by their prefix, are not listed).
func (t *Table) Methods() []string { return slices.Sorted(maps.Keys(t.rules)) }

// Public reports whether method is answered without authentication.
func (t *Table) Public(method string) bool {
	r, ok := t.Rule(method)
	return ok && r.Kind == sigilv1.Access_PUBLIC
}

// Check applies method's rule to an authenticated call by caller with
// request req, recording the decision on caller: a path entry is
// caller.Authorize on the path and capability it computes from req, an
// any-authenticated entry caller.AllowWithoutGrant, and a public or
// handler entry nothing (the handler decides, and the audit interceptor
// withholds a success without a decision). A method without an entry is
// refused (deny by default) and logged as a bug.
func (t *Table) Check(ctx context.Context, caller *core.Caller, method string, req any) error {
	rule, ok := t.Rule(method)
	if !ok {
		// Deny by default: a method nobody classified is nobody's.
		t.log.ErrorContext(ctx, "BUG: method has no authorization table entry; refused", "method", method)
		return caller.Deny("", fmt.Sprintf("method %s has no authorization rule", method))
	}
	switch rule.Kind {
	case sigilv1.Access_PUBLIC, sigilv1.Access_HANDLER:
		return nil
	case sigilv1.Access_ANY_AUTHENTICATED:
		caller.AllowWithoutGrant("", rule.Reason)
		return nil
	}
	path, c, err := rule.Resolve(req)
	if err != nil {
		return err
	}
	return caller.Authorize(path, c)
}

// CheckStream is Check for a streaming method, which carries no request to
// compute a path from: public, any-authenticated and fixed-path rules (a
// request-dependent path refuses the nil request; a handler rule is
// refused). path is the policy path whose grant was checked, "" when
// none was: a refusal with a path is a policy decision the caller's
// transport must audit.
func (t *Table) CheckStream(caller *core.Caller, method string) (path string, err error) {
	rule, ok := t.Rule(method)
	if ok && (rule.Kind == sigilv1.Access_PUBLIC || rule.Kind == sigilv1.Access_ANY_AUTHENTICATED) {
		return "", nil
	}
	if ok && rule.Kind == sigilv1.Access_PATH && rule.capFor == nil {
		path, err := rule.path(nil)
		if err != nil {
			return "", err
		}
		return path, caller.Authorize(path, rule.Capability)
	}
	return "", errs.Errorf(errs.PermissionDenied, "permission denied: streaming method %s has no authorization rule", method)
}

// MaxRequest is the largest request method accepts: its access option's
// max_request_bytes, or DefaultMaxRequest.
func (t *Table) MaxRequest(method string) int {
	if r, ok := t.Rule(method); ok {
		return r.MaxRequest
	}
	return DefaultMaxRequest
}

// CheckSize refuses, with ResourceExhausted naming the limit, a request
// larger than its method's limit. A req that is not a proto.Message is not
// checked.
func (t *Table) CheckSize(method string, req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if n, max := proto.Size(m), t.MaxRequest(method); n > max {
		return errs.Errorf(errs.ResourceExhausted, "request of %d bytes exceeds the %s limit of %s", n, sizeName(max), method)
	}
	return nil
}

// sizeName is n bytes for a person: "64 KiB", "5 MiB", "1000 bytes".
func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
