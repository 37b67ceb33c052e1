package server

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// NotPerformedHeader is set on an Unavailable answer given before the
// handler ran: the call did nothing, so a client may retry it on another
// node even when it is not idempotent.
const NotPerformedHeader = "x-sigil-not-performed"

// gateExempt are methods answered without storage: seal status (which a
// node must give while its database is down, to say why it is not
// serving), health and reflection.
func gateExempt(method string) bool {
	return method == sigilv1.SysService_Status_FullMethodName ||
		strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.")
}

// unaryStoreGate refuses calls with Unavailable while this node cannot
// reach its database, before authentication, so nothing is answered from
// memory (the token verification cache, policies, lease counters) that
// another node may have changed: split views are impossible. A call that
// fails inside with an unexplained error while the database does not
// answer is reported as Unavailable too, rather than Internal.
func (s *Server) unaryStoreGate(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.storeGate(ctx, info.FullMethod, nil, false); err != nil {
		_ = grpc.SetHeader(ctx, metadata.Pairs(NotPerformedHeader, "1"))
		return nil, err
	}
	resp, err := handler(ctx, req)
	if err != nil {
		return nil, s.storeGate(ctx, info.FullMethod, err, true)
	}
	return resp, nil
}

// storeGateTap is the store gate for the early gate (tapGate), which
// verifies tokens against storage before any interceptor runs. Nothing
// has run yet, so its refusal says the call was not performed (in the
// message: a tap error carries no headers).
func (s *Server) storeGateTap(ctx context.Context, method string, err error) error {
	return s.storeGate(ctx, method, err, false)
}

// storeGate is the store gate (cluster.Node.Gate) for method: err nil
// before the call, else the call's error, ran after the handler. The gate
// answers with Unavailable; a handler's own Unavailable may hide a lost
// database too, the tap's own Unavailable refusals say why already.
func (s *Server) storeGate(ctx context.Context, method string, err error, ran bool) error {
	if s.cluster == nil || gateExempt(method) {
		return err
	}
	code := grpcCode(err)
	gerr := s.cluster.Gate(ctx, err, code == codes.Internal || code == codes.Unknown || (ran && code == codes.Unavailable), ran)
	if gerr == err || gerr == nil {
		return gerr
	}
	return status.Error(codes.Unavailable, gerr.Error())
}

// clusterService serves ClusterService.
type clusterService struct {
	sigilv1.UnimplementedClusterServiceServer
	s *Server
}

// Members lists the cluster's nodes from the shared database.
func (h clusterService) Members(ctx context.Context, _ *sigilv1.MembersRequest) (*sigilv1.MembersResponse, error) {
	n := h.s.cluster
	if n == nil {
		return nil, status.Error(codes.Unavailable, "cluster membership is not running on this node")
	}
	ms, err := n.Members(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &sigilv1.MembersResponse{StaleAfterSeconds: int64(n.StaleAfter().Seconds())}
	for _, m := range ms {
		resp.Members = append(resp.Members, &sigilv1.Member{
			Id: m.ID, GrpcAddr: m.GRPCAddr, HttpsAddr: m.HTTPSAddr, PublicUrl: m.PublicURL, Version: m.Version,
			Sealed: m.Sealed, StartedAtUnix: m.StartedAt.Unix(), LastHeartbeatUnix: m.LastHeartbeat.Unix(),
			Stale: m.Stale, Self: m.ID == n.ID(),
		})
	}
	return resp, nil
}
