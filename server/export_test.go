package server

import "github.com/sigil-ca/sigil/authz/authztest"

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
	r, ok := s.authz.Rule(method)
	path := func(req any) (string, error) {
		p, _, err := r.Resolve(req)
		return p, err
	}
	return AuthzEntry{Kind: authztest.KindName(r.Kind), Capability: string(r.Capability), Path: path}, ok
}

// AuthzMethods lists the methods s's authorization table names.
func AuthzMethods(s *Server) []string { return s.authz.Methods() }
