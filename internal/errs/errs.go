// Package errs is Sigil's domain error model: an error with a Kind that
// says what went wrong in terms a transport can translate (not found, bad
// input, refused, ...), independent of gRPC, HTTP or ACME. Each transport
// maps kinds once, in one place (for gRPC: the server's request
// interceptor); code below the transports returns these errors and never
// builds a transport status itself.
//
// Errors nest with %w as usual: KindOf finds the outermost *Error in the
// chain, so wrapping a kinded error with more context keeps its kind.
package errs

import (
	"errors"
	"fmt"
)

// Kind classifies an error by what the caller can do about it.
type Kind int

// The kinds. Internal (the zero value) is for bugs and failures the caller
// cannot fix: its message is never shown to the caller, only logged.
const (
	Internal Kind = iota
	NotFound
	InvalidArgument
	PermissionDenied
	FailedPrecondition
	Unavailable
	Conflict
	ResourceExhausted
	Unauthenticated
	// Unimplemented: the operation does not exist for this target (an
	// engine type without it).
	Unimplemented
)

var kindNames = [...]string{
	Internal:           "internal",
	NotFound:           "not found",
	InvalidArgument:    "invalid argument",
	PermissionDenied:   "permission denied",
	FailedPrecondition: "failed precondition",
	Unavailable:        "unavailable",
	Conflict:           "conflict",
	ResourceExhausted:  "resource exhausted",
	Unauthenticated:    "unauthenticated",
	Unimplemented:      "unimplemented",
}

func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Error is a domain error: a kind, a message meant for the caller, and
// optionally the error underneath (kept for errors.Is/As and the log).
type Error struct {
	Kind Kind
	// Op names the operation that failed ("sign", "configure engine"); it
	// is the only text of an Internal error the caller sees.
	Op string
	// Msg is the whole message the caller sees (for Internal, only the
	// log sees it); it already includes the cause's text where wanted.
	Msg string
	// Err is the cause, if any.
	Err error
}

func (e *Error) Error() string {
	switch {
	case e.Msg != "":
		return e.Msg
	case e.Err != nil:
		return e.Err.Error()
	}
	return e.Kind.String()
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an error of kind k with message msg.
func New(k Kind, msg string) error { return &Error{Kind: k, Msg: msg} }

// Errorf returns an error of kind k with a formatted message; a %w verb
// wraps its operand as the cause, as with fmt.Errorf.
func Errorf(k Kind, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{Kind: k, Msg: err.Error(), Err: errors.Unwrap(err)}
}

// Wrap gives err the kind k in operation op: its message is prefixed with
// "op: " (op may be empty). A nil err stays nil.
func Wrap(k Kind, op string, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if op != "" {
		msg = op + ": " + msg
	}
	return &Error{Kind: k, Op: op, Msg: msg, Err: err}
}

// Public is the text a caller may see: the message, except for Internal
// errors, whose cause stays in the server log and which read
// "OP: internal error".
func (e *Error) Public() string {
	if e.Kind != Internal {
		return e.Error()
	}
	if e.Op != "" {
		return e.Op + ": internal error"
	}
	return "internal error"
}

// As returns the outermost *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// KindOf returns the kind of the outermost *Error in err's chain, and
// Internal for any other non-nil error.
func KindOf(err error) Kind {
	if e, ok := As(err); ok {
		return e.Kind
	}
	return Internal
}

// Is reports whether err carries kind k.
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }
