package core_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
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
			got, err := core.Seconds("ttl_seconds", tt.secs, tt.limit, "tokens.max_ttl")
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %v, %v; want %v", got, err, tt.want)
				}
				return
			}
			if !isKind(err, errs.InvalidArgument) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "ttl_seconds") {
				t.Fatalf("err %v, want InvalidArgument naming ttl_seconds and %q", err, tt.wantErr)
			}
		})
	}
}
