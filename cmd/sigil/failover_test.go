package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestNormalizeAddrs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "a:1", want: []string{"a:1"}},
		{in: "a:1,b:2, https://c:3", want: []string{"a:1", "b:2", "c:3"}},
		{in: "a:1,,b:2,", want: []string{"a:1", "b:2"}},
		{in: ",", err: "names no address"},
		{in: "a:1,b", err: "has no port"},
		{in: "a:1,http://b:2", err: "needs TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := normalizeAddrs(tt.in, "SIGIL_ADDR")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("normalizeAddrs(%q) = %q, %v; want error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Fatalf("normalizeAddrs(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// TestRetryPolicy: an Unavailable call is repeated only when that is
// safe: the method is idempotent, or the server said it did not run it.
// Everything else is returned at once, so a sign or a mint that a dying
// node may have done is never done twice behind the caller's back.
func TestRetryPolicy(t *testing.T) {
	notPerformedHeader := func(ctx context.Context, opts []grpc.CallOption) {
		for _, o := range opts {
			if h, ok := o.(grpc.HeaderCallOption); ok {
				*h.HeaderAddr = metadata.Pairs(notPerformedHeader, "1")
			}
		}
	}
	tests := []struct {
		name, method string
		fail         int // calls that fail before one succeeds
		code         codes.Code
		msg          string
		mark         bool // the failure carries the not-performed header
		wantCalls    int
		wantErr      bool
	}{
		{"idempotent read retried", "/sigil.v1.KVService/Get", 2, codes.Unavailable, "node gone", false, 3, false},
		{"list retried", "/sigil.v1.CAService/ListCertificates", 1, codes.Unavailable, "x", false, 2, false},
		{"sign not retried", "/sigil.v1.CAService/Sign", 1, codes.Unavailable, "connection reset", false, 1, true},
		{"creds not retried", "/sigil.v1.EngineService/Creds", 1, codes.Unavailable, "x", false, 1, true},
		{"sign retried when not performed (header)", "/sigil.v1.CAService/Sign", 2, codes.Unavailable, "x", true, 3, false},
		{"put retried when not performed (early gate message)", "/sigil.v1.KVService/Put", 1, codes.Unavailable,
			"storage unreachable: this node refuses calls until the database answers again", false, 2, false},
		{"may-have-run message not retried", "/sigil.v1.KVService/Put", 1, codes.Unavailable,
			"storage became unreachable during the call; it may or may not have taken effect", false, 1, true},
		{"other codes not retried", "/sigil.v1.KVService/Get", 1, codes.Internal, "x", false, 1, true},
		{"gives up after retryAttempts", "/sigil.v1.KVService/Get", 100, codes.Unavailable, "x", false, retryAttempts, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			invoker := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
				calls++
				if calls <= tt.fail {
					if tt.mark {
						notPerformedHeader(ctx, opts)
					}
					return status.Error(tt.code, tt.msg)
				}
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := retryInterceptor(ctx, tt.method, nil, nil, nil, invoker)
			if calls != tt.wantCalls || (err != nil) != tt.wantErr {
				t.Fatalf("calls %d err %v; want %d calls, error %v", calls, err, tt.wantCalls, tt.wantErr)
			}
		})
	}
}
