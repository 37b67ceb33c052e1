package server

import (
	"context"
	"database/sql"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/cluster"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage/postgres"
)

// NotPerformedHeader is set on an Unavailable answer given before the
// handler ran: the call did nothing, so a client may retry it on another
// node even when it is not idempotent.
const NotPerformedHeader = "x-sigil-not-performed"

// newCluster makes this node's cluster membership once storage is open
// and the listeners are bound, before the core (whose background work
// runs its singletons through it). On PostgreSQL the node shares the
// members table; on SQLite it is a cluster of one whose heartbeat is a
// storage ping.
func (s *Server) newCluster() error {
	id, err := cluster.NodeID(s.cfg.DataDir)
	if err != nil {
		return err
	}
	cfg := cluster.Config{
		Self:   cluster.Member{ID: id, GRPCAddr: s.GRPCAddr(), HTTPSAddr: s.HTTPSAddr(), PublicURL: s.cfg.PublicURL, Version: s.version},
		Sealed: func() bool { return s.current() == nil },
		Logger: s.log,
		Ping:   s.store.Ping,
	}
	if db, ok := s.store.(interface{ DB() *sql.DB }); ok && s.store.Backend() == "postgres" {
		cfg.DB = db.DB()
		cfg.DropIdle = func() { postgres.DropIdle(cfg.DB) }
	}
	s.cluster = cluster.New(cfg)
	return nil
}

// startCluster registers this node and heartbeats until the server closes.
func (s *Server) startCluster() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.cluster.Run(ctx)
	}()
	s.closers = append(s.closers, func() error { cancel(); <-done; return nil })
}

// once runs fn on one node of the cluster at a time (core.Wiring.Once).
func (s *Server) once(ctx context.Context, name string, fn func(context.Context) error) error {
	return s.cluster.Singleton(ctx, name, fn)
}

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
	if s.cluster == nil || gateExempt(info.FullMethod) {
		return handler(ctx, req)
	}
	if err := s.cluster.Healthy(); err != nil {
		_ = grpc.SetHeader(ctx, metadata.Pairs(NotPerformedHeader, "1"))
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp, err := handler(ctx, req)
	if err == nil {
		return resp, nil
	}
	if code, _, _ := mapError(err); code != codes.Internal && code != codes.Unknown && code != codes.Unavailable {
		return nil, err
	}
	if s.cluster.StorageFailed(ctx) {
		s.log.WarnContext(ctx, "call failed while storage is unreachable", "method", info.FullMethod, "err", err)
		return nil, status.Error(codes.Unavailable, cluster.ErrStorageLost.Error())
	}
	return nil, err
}

// storeGateTap is unaryStoreGate for the early gate (tapGate), which
// verifies tokens against storage before any interceptor runs: with err
// nil it refuses while the node is cut off from its database; with the
// gate's error, it reports a failure the database caused as Unavailable.
// Nothing has run yet either way, so the refusal says the call was not
// performed (the message: a tap error carries no headers).
func (s *Server) storeGateTap(ctx context.Context, method string, err error) error {
	if s.cluster == nil || gateExempt(method) {
		return err
	}
	if err == nil {
		if herr := s.cluster.Healthy(); herr != nil {
			return status.Error(codes.Unavailable, herr.Error())
		}
		return nil
	}
	if code, _, _ := mapError(err); code != codes.Internal && code != codes.Unknown {
		return err
	}
	if s.cluster.StorageFailed(ctx) {
		return status.Error(codes.Unavailable, cluster.ErrStorageUnavailable.Error())
	}
	return err
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
