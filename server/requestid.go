package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
)

// requestIDHeader carries the request id back to the caller as response
// header metadata; every non-OK status message names it too.
const requestIDHeader = "x-request-id"

// request is what every gRPC call carries from the early gate (or the
// request interceptor) to its last log line and audit record: the
// server-chosen request id (which correlates the audit record with logs and
// the caller's error), the credential the gate checked, and, once
// authentication has found one, the caller as core sees it.
type request struct {
	rid  string
	cred core.Credential
	*core.Caller
	// audited is set by a handler whose use case wrote the call's success
	// record itself, in the transaction that did the work (core.CallAudit):
	// unaryAudit then does not write it again.
	audited bool
}

// identity names the caller for the log, "" before authentication.
func (r *request) identity() string {
	if r.Caller == nil {
		return ""
	}
	return r.Name()
}

type requestKey struct{}

// callFrom is the call's request, authenticated or not; nil outside a call.
func callFrom(ctx context.Context) *request {
	r, _ := ctx.Value(requestKey{}).(*request)
	return r
}

// requestFrom is the call's request once authenticated, else nil.
func requestFrom(ctx context.Context) *request {
	if r := callFrom(ctx); r != nil && r.Caller != nil {
		return r
	}
	return nil
}

// requestIDFrom returns the call's request id, "" outside a call.
func requestIDFrom(ctx context.Context) string {
	if r := callFrom(ctx); r != nil {
		return r.rid
	}
	return ""
}

// withCall gives ctx a request with a fresh id unless it has one. The id
// is the server's alone: a client-sent x-request-id is ignored, so a
// caller cannot forge or collide ids in the log and audit trail.
func withCall(ctx context.Context) (context.Context, *request) {
	if r := callFrom(ctx); r != nil {
		return ctx, r
	}
	r := &request{rid: newRequestID()}
	return context.WithValue(ctx, requestKey{}, r), r
}

// newRequestID returns 16 hex digits from crypto/rand.
func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return short)
	return hex.EncodeToString(b[:])
}

// kindCode maps a domain error kind to its gRPC code. Conflict is
// AlreadyExists, as the engine handlers have always answered.
func kindCode(k errs.Kind) codes.Code {
	switch k {
	case errs.NotFound:
		return codes.NotFound
	case errs.InvalidArgument:
		return codes.InvalidArgument
	case errs.PermissionDenied:
		return codes.PermissionDenied
	case errs.FailedPrecondition:
		return codes.FailedPrecondition
	case errs.Unavailable:
		return codes.Unavailable
	case errs.Conflict:
		return codes.AlreadyExists
	case errs.ResourceExhausted:
		return codes.ResourceExhausted
	case errs.Unauthenticated:
		return codes.Unauthenticated
	case errs.Unimplemented:
		return codes.Unimplemented
	}
	return codes.Internal
}

// mapError is the one place an error becomes a gRPC status: a status a
// handler built keeps its code and message; a domain error (errs.Error,
// ca.Error, storage.ErrNotFound, a context error) gets its kind's code;
// anything else is a bug and becomes Internal, its cause logged only on
// the server. internal reports that case (for the log).
func mapError(err error) (code codes.Code, msg string, internal bool) {
	if k, msg, ok := core.Public(err); ok {
		code := kindCode(k)
		return code, msg, code == codes.Internal
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Code(), st.Message(), st.Code() == codes.Internal
	}
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled, "canceled", false
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, "deadline exceeded", false
	}
	return codes.Internal, "internal error", true
}

// statusWithID is err as the status the caller gets: mapped, with the
// request id in its message. Applying it twice changes nothing.
func statusWithID(err error, rid string) (*status.Status, bool) {
	code, msg, internal := mapError(err)
	if rid != "" && !strings.Contains(msg, "(request id ") {
		msg += " (request id " + rid + ")"
	}
	return status.New(code, msg), internal
}

// publicMessage is the message err will be answered with, without the
// request id (the audit record carries that in its own field).
func publicMessage(err error) string {
	_, msg, _ := mapError(err)
	return msg
}

// grpcCode is the code err will be answered with.
func grpcCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	code, _, _ := mapError(err)
	return code
}

// finish maps a call's error, logs the request line (and an internal
// error's cause) and counts it. It returns the status error to send.
func (s *Server) finish(ctx context.Context, c *request, method string, start time.Time, resp any, err error) error {
	code := codes.OK
	var out error
	if err != nil {
		if e, ok := errs.As(err); ok && e.RetryAfter > 0 {
			secs := max(1, int(e.RetryAfter.Round(time.Second)/time.Second))
			_ = grpc.SetHeader(ctx, metadata.Pairs("retry-after", strconv.Itoa(secs)))
		}
		st, internal := statusWithID(err, c.rid)
		code, out = st.Code(), st.Err()
		if internal {
			// The cause may name internals, never secrets (errors carry
			// none); the caller sees only the operation and the id.
			s.log.ErrorContext(ctx, "request failed with an internal error", "method", method, "identity", c.identity(), "err", err)
		}
	}
	d := time.Since(start)
	s.metrics.ObserveGRPC(method, code, d, resp)
	// Checked first so a server not logging at debug builds no attributes.
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.LogAttrs(ctx, slog.LevelDebug, "grpc request",
			slog.String("method", method), slog.String("identity", c.identity()),
			slog.Float64("duration_ms", float64(d.Microseconds())/1000), slog.String("code", code.String()))
	}
	return out
}

// unaryRequest is the outermost interceptor: it gives the call its request
// id (sent back as x-request-id), and maps whatever error the chain
// returns, in one place, to the status the caller sees.
func (s *Server) unaryRequest(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	ctx, c := withCall(ctx)
	// requestIDHeader is already lower case, so the MD is built directly
	// rather than through metadata.Pairs.
	_ = grpc.SetHeader(ctx, metadata.MD{requestIDHeader: {c.rid}})
	resp, err := handler(ctx, req)
	if err = s.finish(ctx, c, info.FullMethod, start, resp, err); err != nil {
		return nil, err
	}
	return resp, nil
}

// streamRequest is unaryRequest for streaming methods.
func (s *Server) streamRequest(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	ctx, c := withCall(ss.Context())
	_ = ss.SetHeader(metadata.Pairs(requestIDHeader, c.rid))
	err := handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	return s.finish(ctx, c, info.FullMethod, start, nil, err)
}
