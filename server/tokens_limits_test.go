package server

import (
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSecondsField: seconds from the wire never overflow into a negative or
// tiny duration, and a limit is enforced before converting.
func TestSecondsField(t *testing.T) {
	tests := []struct {
		name    string
		secs    int64
		limit   time.Duration
		want    time.Duration
		wantErr string
	}{
		{"zero", 0, time.Hour, 0, ""},
		{"at the limit", 3600, time.Hour, time.Hour, ""},
		{"over the limit", 3601, time.Hour, 0, "exceeds tokens.max_ttl 1h0m0s"},
		{"293 years", 9223372036, 768 * time.Hour, 0, "about 292 years"},
		{"negative", -60, time.Hour, 0, "must not be negative"},
		{"MaxInt64 without a limit", math.MaxInt64, 0, 0, "out of range"},
		{"largest convertible", math.MaxInt64 / int64(time.Second), 0, time.Duration(math.MaxInt64/int64(time.Second)) * time.Second, ""},
		{"2^34 wraps positive", 1 << 34, 0, 0, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := secondsField("ttl_seconds", tt.secs, tt.limit, "tokens.max_ttl")
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %v, %v; want %v", got, err, tt.want)
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "ttl_seconds") {
				t.Fatalf("err %v, want InvalidArgument naming ttl_seconds and %q", err, tt.wantErr)
			}
		})
	}
}

// TestTokenOfLease: every lease id under the auth mount is recognised as an
// API token's, so none slips through to the leases/ grants.
func TestTokenOfLease(t *testing.T) {
	tests := []struct {
		id     string
		token  string
		isAuth bool
	}{
		{"auth/token/abc", "abc", true},
		{"auth", "", true},
		{"auth/token/", "", true},
		{"auth/token/a/b", "", true},
		{"auth/other/x", "", true},
		{"authx/token/abc", "", false},
		{"db/ro/abc", "", false},
		{"svc/auth/token", "", false},
	}
	for _, tt := range tests {
		tok, isAuth := tokenOfLease(tt.id)
		if tok != tt.token || isAuth != tt.isAuth {
			t.Errorf("tokenOfLease(%q) = %q, %v; want %q, %v", tt.id, tok, isAuth, tt.token, tt.isAuth)
		}
	}
}
