package server

// Resource limits that hold before a caller is authenticated.
//
// grpc-go reads and decodes a unary request's whole body before any
// interceptor runs, and its receive limit (MaxRecvMsgSize) is server-wide:
// there is no per-method limit. So the limits are layered:
//
//  1. The early gate (an InTapHandle) runs when a stream's headers arrive,
//     before any of its body is read. For every non-public method it
//     requires a credential, checked by core without spending anything: a
//     bearer token that verifies, or a client certificate that chains to
//     Sigil's own issuers as an SVID (once per connection: its chain cannot
//     change). Anything else is refused there, so an unauthenticated caller
//     never gets a body read, whatever size it announces. The checked
//     credential travels with the call to authenticate, which finishes the
//     check (a token's use, the SVID's inventory record) instead of
//     repeating it.
//  2. Public methods (health, status, init, unseal, enroll, unwrap) carry
//     their own credential in the body or none, so (1) cannot apply. Their
//     bodies may be up to the server-wide limit before anything is checked,
//     so they are bounded by count instead: at most maxPublicStreamsPerConn
//     on one connection, maxPublicCallsPerSource from one address (an IPv6
//     /64) over all its connections, and maxPublicCalls on the whole server
//     at once, each for at most publicCallTimeout. A call over any count is
//     refused at once with ResourceExhausted, before its body is read:
//     unauthenticated callers can hold at most maxPublicCalls ×
//     maxGRPCMessage of memory, and one address never every slot. Health
//     checks count against bounds of their own (maxHealthCalls), so a flood
//     of other public calls does not fail them.
//  3. After authentication (or, for public methods, decoding), a per-method
//     limit (64 KiB unless the method needs more; less for the public ones;
//     declared on each rpc and applied by package authz) refuses an
//     oversized request with ResourceExhausted naming the limit, before
//     the handler does anything with it.
//
// A codec that enforced sizes was considered and rejected: it sees the
// message only after grpc-go has read it, so it saves nothing that (3)
// does not, and it knows the message type, not the method.

import (
	"context"
	"crypto/x509"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/tap"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/ratelimit"
)

const (
	// maxGRPCMessage is the server-wide receive limit: a transit batch
	// carries up to 4 MiB of items, plus framing.
	maxGRPCMessage = 5 << 20
	// maxConcurrentStreams bounds the calls one connection has in flight.
	maxConcurrentStreams = 100
	// maxPublicStreamsPerConn bounds the unauthenticated (public-method)
	// calls one connection has in flight.
	maxPublicStreamsPerConn = 8
	// maxPublicCalls bounds the unauthenticated calls the whole server has
	// in flight: each may carry a body up to maxGRPCMessage before its size
	// is checked. Public calls are quick (a status, a share, a join token),
	// so this is many per second; a refused caller retries.
	maxPublicCalls = 16
	// maxPublicCallsPerSource bounds one source address's share of them,
	// over all its connections: one client cannot take every slot and lock
	// out unseal, logins and enrolment.
	maxPublicCallsPerSource = 4
	// maxHealthCalls, maxHealthPerConn and maxHealthPerSource bound health
	// checks (Check and Watch), which have slots of their own.
	maxHealthCalls, maxHealthPerConn, maxHealthPerSource = 16, 4, 4
	// publicCallTimeout ends a public call that holds its slot longer (a
	// body trickled in, or never sent), so slots cannot be held forever.
	publicCallTimeout = 30 * time.Second
)

// connState is what the gate remembers about one connection: its client
// certificate's check (done once: the chain cannot change on a
// connection), and how many public calls are open.
type connState struct {
	cert   core.CertCheck
	public ratelimit.Conn
	health ratelimit.Conn
}

type connKey struct{}

// gateStats is the stats handler that gives each connection its connState
// and releases public-call slots when calls end.
type gateStats struct{}

func (gateStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, connKey{}, &connState{})
}

func (gateStats) HandleConn(context.Context, stats.ConnStats) {}

func (gateStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (gateStats) HandleRPC(ctx context.Context, st stats.RPCStats) {
	if _, ok := st.(*stats.End); !ok {
		return
	}
	ratelimit.ReleaseHeld(ctx)
}

// tapGate is the InTapHandle. It runs on the connection's reader
// goroutine, so it does only cheap work: a token costs an HMAC and a cache
// lookup (a storage read on a miss), a certificate chain is verified once
// per connection, a public call takes two counters. It never spends a
// token use: authenticate does, when the call proceeds.
func (s *Server) tapGate(ctx context.Context, info *tap.Info) (context.Context, error) {
	start := time.Now()
	ctx, c := withCall(ctx)
	var err error
	if s.publicMethod(info.FullMethodName) {
		ctx, err = s.takePublicSlot(ctx, info.FullMethodName)
	} else if err = s.storeGateTap(ctx, info.FullMethodName, nil); err == nil {
		c.cred, err = s.gate(ctx, info.Header)
		err = s.storeGateTap(ctx, info.FullMethodName, err)
	}
	if err == nil {
		return ctx, nil
	}
	// The call never reaches the interceptors: account for it here.
	st, internal := statusWithID(err, c.rid)
	if internal {
		s.log.ErrorContext(ctx, "early authentication failed", "method", info.FullMethodName, "err", err)
	}
	s.metrics.ObserveGRPC(info.FullMethodName, st.Code(), time.Since(start), nil)
	s.log.LogAttrs(ctx, slog.LevelDebug, "grpc request refused before its body was read",
		slog.String("method", info.FullMethodName), slog.String("code", st.Code().String()))
	return nil, st.Err()
}

// takePublicSlot admits a public call if its connection, its source
// address and the server all have a slot free, and bounds how long it may
// hold them. Health checks have slots of their own, so a flood of other
// unauthenticated calls (logins, unseal attempts) does not make a load
// balancer take the node out.
func (s *Server) takePublicSlot(ctx context.Context, method string) (context.Context, error) {
	var conn *ratelimit.Conn
	cs, _ := ctx.Value(connKey{}).(*connState)
	slots := s.publicCalls
	if strings.HasPrefix(method, healthServicePrefix) {
		slots = s.healthCalls
		if cs != nil {
			conn = &cs.health
		}
	} else if cs != nil {
		conn = &cs.public
	}
	return slots.Hold(ctx, conn, peerSource(ctx), publicCallTimeout)
}

// healthServicePrefix starts the gRPC health service's method names.
const healthServicePrefix = "/grpc.health.v1.Health/"

// peerSource is the caller's address for per-source bounds
// (ratelimit.SourceKey); "" when unknown.
func peerSource(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	return ratelimit.SourceKey(p.Addr.String())
}

// gate requires a credential on a non-public call and has core check it
// without spending anything: a token, or a client certificate (once per
// connection). authenticate finishes the check.
func (s *Server) gate(ctx context.Context, md metadata.MD) (core.Credential, error) {
	var cache *core.CertCheck
	if cs, _ := ctx.Value(connKey{}).(*connState); cs != nil {
		cache = &cs.cert
	}
	return s.core.CheckCredential(ctx, md.Get("authorization"), peerChain(ctx), cache)
}

// unaryLimit applies the per-method request size limit (the authorization
// table's, authz.Table.CheckSize) after authentication.
func (s *Server) unaryLimit(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.authz.CheckSize(info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// peerChain returns the client certificates the caller presented, if any.
// The listeners request but do not require them (tokens work too), and do
// not verify them in the TLS layer: the CA's roots can change while the
// server runs (ca init, rotation), so core checks them against the
// current hierarchy.
func peerChain(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return ti.State.PeerCertificates
}
