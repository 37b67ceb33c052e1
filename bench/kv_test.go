package bench

import (
	"strings"
	"testing"
	"time"
)

// TestKVBarrierCeiling: both ceilings run a real barrier and count work.
func TestKVBarrierCeiling(t *testing.T) {
	for _, tt := range []struct {
		open bool
		want string
	}{{false, "kv-put: encode + barrier seal"}, {true, "kv-get: barrier open + decode"}} {
		c, err := KVBarrierCeiling(t.Context(), tt.open, 2, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if c.Ops == 0 || c.Rate <= 0 || c.Goroutines != 2 || !strings.HasPrefix(c.Name, tt.want) {
			t.Fatalf("open=%v: %+v", tt.open, c)
		}
	}
}
