package server

// Resource limits that hold before a caller is authenticated.
//
// grpc-go reads and decodes a unary request's whole body before any
// interceptor runs, and its receive limit (MaxRecvMsgSize) is server-wide:
// there is no per-method limit. So the limits are layered:
//
//  1. The early gate (an InTapHandle) runs when a stream's headers arrive,
//     before any of its body is read. For every non-public method it
//     requires a credential: a bearer token that verifies (without
//     spending a use), or a TLS client certificate that chains to Sigil's
//     own issuers. Anything else is refused there, so an unauthenticated
//     caller never gets a body read, whatever size it announces.
//  2. The server-wide receive limit is the largest any method needs (a
//     transit batch), and a stream count per connection bounds how many
//     bodies one connection may have in flight.
//  3. After authentication, a per-method limit (64 KiB unless the method
//     needs more) refuses an oversized request with ResourceExhausted
//     naming the limit, before the handler does anything with it.
//
// A codec that enforced sizes was considered and rejected: it sees the
// message only after grpc-go has read it, so it saves nothing that (3)
// does not, and it knows the message type, not the method.
//
// Public methods (health, status, unseal, enroll, unwrap) carry their own
// credential in the body or none, so (1) cannot apply to them; their
// bodies are still bounded by (2), and each connection may have only a
// few of them in flight at once (maxPublicStreamsPerConn).

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/internal/errs"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

const (
	// maxGRPCMessage is the server-wide receive limit: a transit batch
	// carries up to 4 MiB of items, plus framing.
	maxGRPCMessage = 5 << 20
	// defaultMaxRequest bounds every method not listed in maxRequestSize.
	defaultMaxRequest = 64 << 10
	// maxConcurrentStreams bounds the calls one connection has in flight.
	maxConcurrentStreams = 100
	// maxPublicStreamsPerConn bounds the unauthenticated (public-method)
	// calls one connection has in flight: each may carry a body up to
	// maxGRPCMessage before its size is checked.
	maxPublicStreamsPerConn = 8
)

// maxRequestSize is the largest request method accepts, checked after
// authentication. Only methods whose documented inputs need more than the
// default are listed.
func maxRequestSize(method string) int {
	switch method {
	case sigilv1.TransitService_Encrypt_FullMethodName, sigilv1.TransitService_Decrypt_FullMethodName,
		sigilv1.TransitService_Rewrap_FullMethodName:
		return maxGRPCMessage // a batch: 4 MiB of items (transit.MaxBatchBytes)
	case sigilv1.TransitService_Sign_FullMethodName, sigilv1.TransitService_Verify_FullMethodName,
		sigilv1.TransitService_HMAC_FullMethodName, sigilv1.TransitService_VerifyHMAC_FullMethodName:
		return 2 << 20 // 1 MiB of input (transit.MaxInput) plus a signature
	case sigilv1.KVService_Put_FullMethodName, sigilv1.KVService_Patch_FullMethodName:
		return kv.MaxMaxValueBytes + 64<<10 // a secret at the configurable ceiling, plus framing
	case sigilv1.CAService_ImportIntermediate_FullMethodName:
		return 2 * core.MaxChainPEM
	case sigilv1.CAService_Sign_FullMethodName, sigilv1.IdentityService_Enroll_FullMethodName,
		sigilv1.PolicyService_Write_FullMethodName, sigilv1.PolicyService_Test_FullMethodName:
		return 128 << 10 // a 64 KiB CSR (ca.MaxCSRSize) or policy document, plus the rest
	case sigilv1.EngineService_Configure_FullMethodName, sigilv1.EngineService_WriteRole_FullMethodName:
		return 256 << 10 // statements, CA bundles
	}
	return defaultMaxRequest
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// checkRequestSize refuses a request larger than its method's limit.
func checkRequestSize(method string, req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if n, max := proto.Size(m), maxRequestSize(method); n > max {
		return errs.Errorf(errs.ResourceExhausted, "request of %d bytes exceeds the %s limit of %s", n, sizeName(max), method)
	}
	return nil
}

// Errors the gate and authenticate share, so a caller hears the same
// reason from both.
var (
	errBadAuthHeader    = errs.New(errs.Unauthenticated, `authorization header must be "Bearer TOKEN"`)
	errInvalidToken     = errs.New(errs.Unauthenticated, "invalid or expired token")
	errWrongPurpose     = errs.New(errs.PermissionDenied, "this token is a join or wrapping token: use it with `sigil identity enroll` or `sigil unwrap`")
	errMissingCreds     = errs.New(errs.Unauthenticated, `missing credentials: send "authorization: Bearer TOKEN" (set SIGIL_TOKEN) or a client certificate Sigil issued (SIGIL_CLIENT_CERT)`)
	errUntrustedCert    = errs.New(errs.Unauthenticated, "client certificate not accepted: it does not chain to this Sigil's CA")
	errTooManyUnauthRPC = errs.Errorf(errs.ResourceExhausted, "too many unauthenticated calls in flight on this connection (at most %d)", maxPublicStreamsPerConn)
)

// bearerToken returns the token of an authorization header, "" if there is
// none.
func bearerToken(md metadata.MD) (string, error) {
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", nil
	}
	tok, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		return "", errBadAuthHeader
	}
	if tok = strings.TrimSpace(tok); tok == "" {
		return "", errBadAuthHeader
	}
	return tok, nil
}

// tokenError turns a token verification failure into the caller's error.
func tokenError(err error) error {
	switch {
	case errors.Is(err, auth.ErrInvalidToken):
		return errInvalidToken
	case errors.Is(err, auth.ErrWrongPurpose):
		return errWrongPurpose
	}
	return errs.Wrap(errs.Internal, "token verification", err)
}

// connState is what the gate remembers about one connection: whether its
// client certificate chains to Sigil's issuers (checked once: the chain
// cannot change on a connection), and how many public calls are open.
type connState struct {
	certOnce sync.Once
	certErr  error
	public   atomic.Int32
}

type connKey struct{}

// publicSlot marks a public call holding one of its connection's slots.
type publicSlot struct {
	conn     *connState
	released atomic.Bool
}

type publicSlotKey struct{}

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
	if p, ok := ctx.Value(publicSlotKey{}).(*publicSlot); ok && p.released.CompareAndSwap(false, true) {
		p.conn.public.Add(-1)
	}
}

// tapGate is the InTapHandle. It runs on the connection's reader
// goroutine, so it does only cheap work: a token costs an HMAC and a cache
// lookup (a storage read on a miss), a certificate chain is verified once
// per connection. It never spends a token use: authenticate does, when the
// call proceeds.
func (s *Server) tapGate(ctx context.Context, info *tap.Info) (context.Context, error) {
	start := time.Now()
	ctx, c := withCall(ctx)
	var err error
	if s.publicMethod(info.FullMethodName) {
		ctx, err = s.takePublicSlot(ctx)
	} else {
		err = s.gate(ctx, info.Header)
	}
	if err == nil {
		return ctx, nil
	}
	// The call never reaches the interceptors: account for it here.
	st, internal := statusWithID(err, c.id)
	if internal {
		s.log.ErrorContext(ctx, "early authentication failed", "method", info.FullMethodName, "err", err)
	}
	s.metrics.ObserveGRPC(info.FullMethodName, st.Code(), time.Since(start), nil)
	s.log.LogAttrs(ctx, slog.LevelDebug, "grpc request refused before its body was read",
		slog.String("method", info.FullMethodName), slog.String("code", st.Code().String()))
	return nil, st.Err()
}

func (s *Server) takePublicSlot(ctx context.Context) (context.Context, error) {
	cs, _ := ctx.Value(connKey{}).(*connState)
	if cs == nil {
		return ctx, nil
	}
	if cs.public.Add(1) > maxPublicStreamsPerConn {
		cs.public.Add(-1)
		return nil, errTooManyUnauthRPC
	}
	return context.WithValue(ctx, publicSlotKey{}, &publicSlot{conn: cs}), nil
}

// gate requires a plausible credential on a non-public call: a valid
// token, or a client certificate chaining to Sigil's issuers. The full
// check (and the token's use) is authenticate's.
func (s *Server) gate(ctx context.Context, md metadata.MD) error {
	a, err := s.unsealed()
	if err != nil {
		return err
	}
	tok, err := bearerToken(md)
	if err != nil {
		return err
	}
	if tok != "" {
		if err := a.Tokens.Check(ctx, tok); err != nil {
			return tokenError(err)
		}
		return nil
	}
	chain := peerChain(ctx)
	if len(chain) == 0 {
		return errMissingCreds
	}
	cs, _ := ctx.Value(connKey{}).(*connState)
	if cs == nil {
		return chainsToSigil(a.CA, chain[0])
	}
	cs.certOnce.Do(func() { cs.certErr = chainsToSigil(a.CA, chain[0]) })
	return cs.certErr
}

// chainsToSigil reports whether leaf verifies for client auth through
// Sigil's own intermediates to its root; intermediates the client sent are
// ignored.
func chainsToSigil(authority *ca.Authority, leaf *x509.Certificate) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, is := range authority.Issuers() {
		if is.Kind == ca.KindRoot {
			roots.AddCert(is.Certificate)
		} else {
			inter.AddCert(is.Certificate)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return errUntrustedCert
	}
	return nil
}

// unaryLimit applies the per-method request size limit after
// authentication.
func (s *Server) unaryLimit(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := checkRequestSize(info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}
