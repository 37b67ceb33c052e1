package errs

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestKindAndMessage(t *testing.T) {
	cause := errors.New("disk on fire")
	tests := []struct {
		name    string
		err     error
		kind    Kind
		msg     string
		isCause bool
	}{
		{"new", New(NotFound, "no such key"), NotFound, "no such key", false},
		{"errorf wraps with %w", Errorf(InvalidArgument, "bad ttl %q: %w", "x", cause), InvalidArgument, `bad ttl "x": disk on fire`, true},
		{"wrap prefixes", Wrap(Unavailable, "dial", cause), Unavailable, "dial: disk on fire", true},
		{"wrap without prefix", Wrap(Conflict, "", cause), Conflict, "disk on fire", true},
		{"outer fmt wrap keeps kind", fmt.Errorf("engine: %w", New(PermissionDenied, "no")), PermissionDenied, "engine: no", false},
		{"outermost kind wins", Wrap(FailedPrecondition, "outer", New(NotFound, "inner")), FailedPrecondition, "outer: inner", false},
		{"plain error is internal", cause, Internal, "disk on fire", true},
		{"context error is internal unless kinded", context.Canceled, Internal, "context canceled", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := KindOf(tt.err); got != tt.kind {
				t.Errorf("KindOf = %v, want %v", got, tt.kind)
			}
			if got := tt.err.Error(); got != tt.msg {
				t.Errorf("Error() = %q, want %q", got, tt.msg)
			}
			if errors.Is(tt.err, cause) != tt.isCause {
				t.Errorf("errors.Is(cause) = %v, want %v", !tt.isCause, tt.isCause)
			}
		})
	}
	if e, _ := As(Wrap(Internal, "seal secret", errors.New("low-order point"))); e.Public() != "seal secret: internal error" {
		t.Errorf("internal Public() = %q", e.Public())
	}
	if e, _ := As(Wrap(NotFound, "read role", errors.New("no role r"))); e.Public() != "read role: no role r" {
		t.Errorf("Public() = %q", e.Public())
	}
	if Wrap(Internal, "x", nil) != nil {
		t.Error("Wrap(nil) must stay nil")
	}
	if Is(nil, Internal) {
		t.Error("nil has no kind")
	}
}

// TestShorten: a wrapped chain is said once; brackets, quotes and a
// message without repetition are left alone.
func TestShorten(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"already revoked said three times",
			"ca: revoke: certificate 98ab is already revoked: certificates: revoke 98ab: already revoked: already exists",
			"revoke: certificate 98ab is already revoked"},
		{"configure chain with package prefixes",
			"configure engine: engines: configure db: postgres engine: connect: dial tcp 127.0.0.1:5: connect: connection refused",
			"configure engine: configure db: postgres engine: connect: dial tcp 127.0.0.1:5: connection refused"},
		{"an operation repeated", "sign: sign: bad csr", "sign: bad csr"},
		{"colons inside brackets and quotes kept",
			`postgres engine: connect: failed to connect to "user=a host=b": dial error (dial tcp [::1]:5432: connect: connection refused)`,
			`postgres engine: connect: failed to connect to "user=a host=b": dial error (dial tcp [::1]:5432: connect: connection refused)`},
		{"nothing repeated", "read role: no role r", "read role: no role r"},
		{"one segment", "not found", "not found"},
		{"a lone package name is kept", "storage", "storage"},
		{"not found kept when it adds", "kv get app/db: not found", "kv get app/db: not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Shorten(tt.in); got != tt.want {
				t.Errorf("Shorten(%q)\n = %q\nwant %q", tt.in, got, tt.want)
			}
		})
	}
}
