package server

// The interceptors that enforce the method authorization table (package
// authz, read from the rpcs' option (sigil.v1.access) at start): after
// authentication (and the audit interceptor, which records the decision),
// before the handler.

import (
	"context"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/internal/errs"
)

// publicMethod reports whether method is answered without authentication.
func (s *Server) publicMethod(method string) bool { return s.authz.Public(method) }

// unaryAuthz enforces the table on a unary call.
func (s *Server) unaryAuthz(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !s.publicMethod(info.FullMethod) {
		if requestFrom(ctx) == nil {
			return nil, errs.New(errs.Unauthenticated, "authentication required")
		}
		if err := s.authz.Check(ctx, callerFrom(ctx), info.FullMethod, req); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// streamAuthz is unaryAuthz for streaming methods (authz.Table.CheckStream:
// fixed-path rules only). The unary audit interceptor does not see
// streams, so a grant refused here is audited here (auditStreamCall).
func (s *Server) streamAuthz(ctx context.Context, method string) error {
	path, err := s.authz.CheckStream(callerFrom(ctx), method)
	if err != nil && path != "" {
		if aerr := s.auditStreamCall(ctx, method, path, err); aerr != nil {
			return aerr
		}
	}
	return err
}
