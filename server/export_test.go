package server

import (
	"strings"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// SealedKinds reports the kinds s's barrier sealed values under and those
// of them no rewrapper covers, for tests.
func SealedKinds(s *Server) (sealed, unregistered []string) {
	return s.node.Barrier().SealedKinds(), s.node.Barrier().UnregisteredKinds()
}

// RegisteredMethods lists the full names of every method s's gRPC server
// serves, streaming ones included.
func RegisteredMethods(s *Server) []string {
	var out []string
	for svc, info := range s.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			out = append(out, "/"+svc+"/"+m.Name)
		}
	}
	return out
}

// AuthzEntry is one authorization table entry, for tests.
type AuthzEntry struct {
	Kind       string // public, any-authenticated, path, handler
	Capability string
	Path       func(req any) (string, error)
}

// AuthzFor returns method's entry in s's authorization table.
func AuthzFor(s *Server, method string) (AuthzEntry, bool) {
	r, ok := s.authzLookup(method)
	return AuthzEntry{Kind: kindName(r.kind), Capability: string(r.cap), Path: r.path}, ok
}

// AuthzMethods lists the methods s's authorization table names.
func AuthzMethods(s *Server) []string {
	var out []string
	for m := range s.authz {
		out = append(out, m)
	}
	return out
}

// AuthzEval applies method's rule to req as authorizeCall does, without a
// caller: the rule's kind and reason and, for a path rule, the path and
// capability computed from req or the error the request is refused with.
func AuthzEval(s *Server, method string, req any) (kind, reason, path, capability string, err error) {
	r, ok := s.authzLookup(method)
	if !ok {
		return "", "", "", "", nil
	}
	if r.kind != sigilv1.Access_PATH {
		return kindName(r.kind), r.reason, "", "", nil
	}
	c := r.cap
	if r.capFor != nil {
		c = r.capFor(req)
	}
	p, err := r.path(req)
	if err != nil {
		return kindName(r.kind), r.reason, "", "", err
	}
	return kindName(r.kind), r.reason, p, string(c), nil
}

// MaxRequestSize is the largest request method accepts.
func MaxRequestSize(method string) int { return maxRequestSize(authzTable(), method) }

// MaxGRPCMessage is the server-wide receive limit.
const MaxGRPCMessage = maxGRPCMessage

// kindName is a rule kind as the tests name it: public, any-authenticated,
// path, handler.
func kindName(k sigilv1.Access_Kind) string {
	if k == sigilv1.Access_KIND_UNSPECIFIED {
		return "unknown"
	}
	return strings.ReplaceAll(strings.ToLower(k.String()), "_", "-")
}
