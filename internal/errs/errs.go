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
	"strings"
	"time"
	"unicode"
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
	// RetryAfter, when set, is how long a refused caller should wait
	// before retrying (ResourceExhausted); transports pass it on.
	RetryAfter time.Duration
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
		return Shorten(e.Error())
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

// packagePrefixes are the "pkg: " prefixes Go code puts on its errors. They
// name code, not anything the caller did, so the public message drops them.
var packagePrefixes = map[string]bool{
	"ca": true, "engines": true, "certificates": true, "storage": true, "sqldb": true,
	"barrier": true, "core": true, "lease": true, "envelope": true,
}

// Shorten says a wrapped error chain once: "a: b: c" loses each segment
// that is a package prefix ("engines", "ca") or whose words all appeared
// in the segments kept before it ("revoke: revoke X: already revoked"
// after "certificate X is already revoked"), and a trailing "already
// exists" after a segment that already said "already". Segments split at
// ": " outside brackets and quotes, so an address or a quoted value is
// never cut. The full chain stays in the error for the server's log.
func Shorten(msg string) string {
	segs := splitChain(msg)
	if len(segs) < 2 {
		return msg
	}
	seen := map[string]bool{}
	saidAlready := false
	kept := make([]string, 0, len(segs))
	for i, seg := range segs {
		ws := words(seg)
		drop := i < len(segs)-1 && packagePrefixes[strings.ToLower(strings.TrimSpace(seg))]
		if !drop && len(kept) > 0 && len(ws) > 0 {
			drop = true
			for _, w := range ws {
				if !seen[w] {
					drop = false
					break
				}
			}
		}
		if !drop && saidAlready && strings.TrimSpace(seg) == "already exists" {
			drop = true
		}
		if drop {
			continue
		}
		kept = append(kept, seg)
		for _, w := range ws {
			seen[w] = true
		}
		saidAlready = saidAlready || strings.Contains(seg, "already ")
	}
	return strings.Join(kept, ": ")
}

// splitChain splits msg at ": " outside (), [], {}, quotes and backticks.
func splitChain(msg string) []string {
	var (
		segs  []string
		depth int
		quote rune
		start int
	)
	for i, r := range msg {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '"' || r == '`':
			quote = r
		case r == '(' || r == '[' || r == '{':
			depth++
		case (r == ')' || r == ']' || r == '}') && depth > 0:
			depth--
		case r == ':' && depth == 0 && strings.HasPrefix(msg[i:], ": "):
			segs = append(segs, msg[start:i])
			start = i + 2
		}
	}
	return append(segs, msg[start:])
}

// words are a segment's lower-case words, for comparing segments.
func words(seg string) []string {
	ws := strings.FieldsFunc(strings.ToLower(seg), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '.' && r != '-' && r != '_'
	})
	for i, w := range ws {
		ws[i] = strings.Trim(w, ".")
	}
	return ws
}
