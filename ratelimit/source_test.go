package ratelimit

import "testing"

// TestSourceKey: IPv4 by address, IPv6 by /64 (zone and v4-mapping
// dropped), the port never counts, and what does not parse is its own key.
func TestSourceKey(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"192.0.2.1:4431", "192.0.2.1"},
		{"192.0.2.1", "192.0.2.1"},
		{"[::ffff:192.0.2.1]:80", "192.0.2.1"},
		{"[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9]:444", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:443", "fe80::/64"},
		{"@", "@"},
	}
	for _, tt := range tests {
		if got := SourceKey(tt.addr); got != tt.want {
			t.Errorf("SourceKey(%q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}
