package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage"
	"github.com/sigil-ca/sigil/telemetry"
)

// TestMapError: domain errors, CA errors, handler-built statuses and plain
// errors map to the codes handlers have always answered with, internal
// causes never reach the message, and every message names the request id.
func TestMapError(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		code     codes.Code
		msg      string
		internal bool
	}{
		{"domain not found", errs.New(errs.NotFound, "no such key k"), codes.NotFound, "no such key k", false},
		{"domain conflict", errs.New(errs.Conflict, "mount exists"), codes.AlreadyExists, "mount exists", false},
		{"domain internal hides cause", errs.Wrap(errs.Internal, "seal secret", errors.New("low-order point 00ff")), codes.Internal, "seal secret: internal error", true},
		{"wrapped domain keeps kind", fmt.Errorf("engine: %w", errs.New(errs.Unavailable, "db down")), codes.Unavailable, "db down", false},
		{"handler status kept", status.Error(codes.InvalidArgument, "serial is required"), codes.InvalidArgument, "serial is required", false},
		{"ca bad csr via OpError", core.OpError("sign", &ca.Error{Kind: ca.KindBadCSR, Op: "sign", Msg: "CSR too large"}), codes.InvalidArgument, "sign: CSR too large", false},
		{"ca conflict via OpError", core.OpError("revoke", &ca.Error{Kind: ca.KindConflict, Op: "revoke", Msg: "already revoked"}), codes.FailedPrecondition, "revoke: already revoked", false},
		{"storage not found via OpError", core.OpError("look up token", storage.ErrNotFound), codes.NotFound, "look up token: not found", false},
		{"plain error via OpError", core.OpError("configure engine", errors.New("dial tcp: refused")), codes.Internal, "configure engine: internal error", true},
		{"plain error", errors.New("boom"), codes.Internal, "internal error", true},
		{"canceled", fmt.Errorf("query: %w", context.Canceled), codes.Canceled, "canceled", false},
		{"canceled inside internal", core.OpError("sign", context.Canceled), codes.Canceled, "canceled", false},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, "deadline exceeded", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, internal := statusWithID(tt.err, "0123456789abcdef")
			want := tt.msg + " (request id 0123456789abcdef)"
			if st.Code() != tt.code || st.Message() != want || internal != tt.internal {
				t.Fatalf("got %v %q internal=%v, want %v %q internal=%v", st.Code(), st.Message(), internal, tt.code, want, tt.internal)
			}
			// Mapping an already mapped status changes nothing.
			again, _ := statusWithID(st.Err(), "0123456789abcdef")
			if again.Code() != st.Code() || again.Message() != st.Message() {
				t.Fatalf("second mapping: %v %q", again.Code(), again.Message())
			}
		})
	}
}

// TestAuditNeedsADecision: the audit interceptor never lets a call succeed
// without an authorisation decision; a deliberate no-grant decision and a
// failed call pass through unchanged.
func TestAuditNeedsADecision(t *testing.T) {
	var logged strings.Builder
	s := &Server{log: slog.New(telemetry.RequestLogHandler{Handler: slog.NewTextHandler(&logged, nil), ID: requestIDFrom})}
	info := &grpc.UnaryServerInfo{FullMethod: "/sigil.v1.Test/Method"}
	tests := []struct {
		name    string
		handler grpc.UnaryHandler
		code    codes.Code
		resp    any
	}{
		{"no decision: withheld", func(ctx context.Context, _ any) (any, error) {
			return "secret", nil
		}, codes.Internal, nil},
		{"denied by authorize", func(ctx context.Context, _ any) (any, error) {
			return "secret", callerFrom(ctx).Authorize("sys/anything", "read")
		}, codes.PermissionDenied, "secret"},
		{"deliberate no-grant decision", func(ctx context.Context, _ any) (any, error) {
			callerFrom(ctx).AllowWithoutGrant("sys/tokens/self", "a token may look itself up")
			return "own info", nil
		}, codes.OK, "own info"},
		{"failure before any check", func(ctx context.Context, _ any) (any, error) {
			return nil, errs.New(errs.InvalidArgument, "bad name")
		}, codes.InvalidArgument, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, r := withCall(context.Background())
			r.Caller = &core.Caller{Identity: &auth.Identity{Name: "token:x"}}
			resp, err := s.unaryAudit(ctx, nil, info, tt.handler)
			if grpcCode(err) != tt.code {
				t.Fatalf("code %v (%v), want %v", grpcCode(err), err, tt.code)
			}
			if tt.code == codes.OK && resp != tt.resp {
				t.Fatalf("resp %v, want %v", resp, tt.resp)
			}
			if tt.name == "no decision: withheld" && (resp != nil || !strings.Contains(logged.String(), "without an authorisation decision") || !strings.Contains(logged.String(), "request_id="+r.rid)) {
				t.Fatalf("withheld call: resp %v, log %q", resp, logged.String())
			}
		})
	}
}
