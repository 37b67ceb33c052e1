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
