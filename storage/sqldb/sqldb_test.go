package sqldb

import (
	"strings"
	"testing"
	"time"
)

func TestPrefixEnd(t *testing.T) {
	tests := []struct {
		prefix, end string
		ok          bool
	}{
		{"db/", "db0", true},
		{"a", "b", true},
		{"ro_le", "ro_lf", true},
		{"x\U0010FFFF", "y", true},
		{"\U0010FFFF", "", false},
		{"a\uD7FF", "a\uE000", true},
		{"é", "ê", true},
	}
	for _, tc := range tests {
		end, ok := prefixEnd(tc.prefix)
		if end != tc.end || ok != tc.ok {
			t.Errorf("prefixEnd(%q) = %q, %v; want %q, %v", tc.prefix, end, ok, tc.end, tc.ok)
		}
		if ok && !(tc.prefix < end && strings.HasPrefix(tc.prefix+"\U0010FFFF", tc.prefix) && tc.prefix+"\U0010FFFF" < end) {
			t.Errorf("prefixEnd(%q) = %q does not bound the prefix", tc.prefix, end)
		}
	}
}

type fakeDialect struct{ dollar bool }

func (fakeDialect) Name() string                 { return "fake" }
func (d fakeDialect) DollarPlaceholders() bool   { return d.dollar }
func (fakeDialect) Time(time.Time) any           { return nil }
func (fakeDialect) LockSkipLocked() string       { return "" }
func (fakeDialect) IsUniqueViolation(error) bool { return false }
func (fakeDialect) SerializeWrites() bool        { return false }

func TestPlaceholders(t *testing.T) {
	tests := []struct {
		dollar  bool
		in, out string
	}{
		{false, "a = ? AND b = ?", "a = ? AND b = ?"},
		{true, "a = ? AND b = ?", "a = $1 AND b = $2"},
		{true, "no params", "no params"},
	}
	for _, tc := range tests {
		r := New(nil, fakeDialect{tc.dollar}, nil).repos
		if got := r.sql(tc.in); got != tc.out {
			t.Errorf("sql(%q) = %q, want %q", tc.in, got, tc.out)
		}
	}
}
