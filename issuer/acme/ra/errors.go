package ra

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind classifies a domain error. The WFE turns kinds into ACME problem
// documents in one place (Problem); nothing else chooses an error type or
// a status.
type Kind int

// Kinds, one per ACME error type the RA reports (RFC 8555 §6.7), plus the
// generic not-found and conflict answers, which go out as "malformed".
const (
	KindInternal Kind = iota
	KindMalformed
	KindNotFound
	KindConflict
	KindUnauthorized
	KindAccountDoesNotExist
	KindBadPublicKey
	KindInvalidContact
	KindUnsupportedContact
	KindUserActionRequired
	KindExternalAccountRequired
	KindRejectedIdentifier
	KindUnsupportedIdentifier
	KindInvalidProfile
	KindRateLimited
	KindOrderNotReady
	KindBadCSR
	KindAlreadyRevoked
	KindBadRevocationReason
	KindAlreadyReplaced
	KindUnavailable // the CA cannot issue for now; RetryAfter says when to try again
	KindValidation  // a VA failure; Type carries the VA's ACME error type
)

// Error is the RA's error: a kind, a detail safe to show the client, and
// the cause (logged, never shown).
type Error struct {
	Kind        Kind
	Detail      string
	Identifier  *Identifier
	Subproblems []*Error
	// Type is the ACME error type (without the namespace) of a
	// KindValidation error.
	Type string
	// RetryAfter, for KindRateLimited and KindUnavailable, is how long the
	// client should wait; 0 lets the WFE choose.
	RetryAfter time.Duration
	// Account is the conflicting account's id (a key change to a key in
	// use); the WFE sends its URL as Location.
	Account string
	cause   error
}

func (e *Error) Error() string {
	if e.cause != nil {
		return e.Detail + ": " + e.cause.Error()
	}
	return e.Detail
}

func (e *Error) Unwrap() error { return e.cause }

func errorf(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Detail: fmt.Sprintf(format, args...)}
}

func malformed(format string, args ...any) *Error { return errorf(KindMalformed, format, args...) }

func unauthorized(format string, args ...any) *Error {
	return errorf(KindUnauthorized, format, args...)
}

func notFound(format string, args ...any) *Error { return errorf(KindNotFound, format, args...) }

func conflict(format string, args ...any) *Error { return errorf(KindConflict, format, args...) }

// internal hides err from the client (it is logged).
func internal(err error, format string, args ...any) *Error {
	e := errorf(KindInternal, format, args...)
	e.cause = err
	return e
}

// asError turns any error into an *Error (internal unless it is one).
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return internal(err, "internal error")
}

// ErrorNS is the ACME error type namespace.
const ErrorNS = "urn:ietf:params:acme:error:"

// Problem is an RFC 7807 problem document with an ACME error type. It is
// both what the WFE sends and how an order's or a challenge's error is
// stored (RFC 8555 §7.1.3 and §7.1.5 make it part of the object).
type Problem struct {
	Type        string      `json:"type"`
	Detail      string      `json:"detail,omitempty"`
	Status      int         `json:"status,omitempty"`
	Identifier  *Identifier `json:"identifier,omitempty"`
	Subproblems []*Problem  `json:"subproblems,omitempty"`
	Algorithms  []string    `json:"algorithms,omitempty"` // badSignatureAlgorithm
}

// HTTP statuses of problems (RFC 9110); the RA does not import net/http.
const (
	statusBadRequest      = 400
	statusUnauthorized    = 401
	statusForbidden       = 403
	statusNotFound        = 404
	statusConflict        = 409
	statusTooManyRequests = 429
	statusInternal        = 500
	statusUnavailable     = 503
)

// kinds maps each kind to its ACME error type and status.
var kinds = map[Kind]struct {
	typ    string
	status int
}{
	KindInternal:                {"serverInternal", statusInternal},
	KindMalformed:               {"malformed", statusBadRequest},
	KindNotFound:                {"malformed", statusNotFound},
	KindConflict:                {"malformed", statusConflict},
	KindUnauthorized:            {"unauthorized", statusForbidden},
	KindAccountDoesNotExist:     {"accountDoesNotExist", statusBadRequest},
	KindBadPublicKey:            {"badPublicKey", statusBadRequest},
	KindInvalidContact:          {"invalidContact", statusBadRequest},
	KindUnsupportedContact:      {"unsupportedContact", statusBadRequest},
	KindUserActionRequired:      {"userActionRequired", statusForbidden},
	KindExternalAccountRequired: {"externalAccountRequired", statusUnauthorized},
	KindRejectedIdentifier:      {"rejectedIdentifier", statusBadRequest},
	KindUnsupportedIdentifier:   {"unsupportedIdentifier", statusBadRequest},
	KindInvalidProfile:          {"invalidProfile", statusBadRequest},
	KindRateLimited:             {"rateLimited", statusTooManyRequests},
	KindOrderNotReady:           {"orderNotReady", statusForbidden},
	KindBadCSR:                  {"badCSR", statusBadRequest},
	KindAlreadyRevoked:          {"alreadyRevoked", statusBadRequest},
	KindBadRevocationReason:     {"badRevocationReason", statusBadRequest},
	KindAlreadyReplaced:         {"alreadyReplaced", statusConflict},
	KindUnavailable:             {"serverInternal", statusUnavailable},
}

// Problem is the problem document for e: the one mapping from domain
// errors to ACME error types and statuses.
func (e *Error) Problem() *Problem {
	p := &Problem{Detail: e.Detail, Identifier: e.Identifier}
	if e.Kind == KindValidation {
		p.Type, p.Status = ErrorNS+e.Type, statusBadRequest
		switch e.Type {
		case "unauthorized", "incorrectResponse", "caa":
			p.Status = statusForbidden
		}
	} else {
		k, ok := kinds[e.Kind]
		if !ok {
			k = kinds[KindInternal]
		}
		p.Type, p.Status = ErrorNS+k.typ, k.status
	}
	for _, s := range e.Subproblems {
		p.Subproblems = append(p.Subproblems, s.Problem())
	}
	return p
}

// ProblemOf is the problem document for any error (internal unless it is
// an *Error).
func ProblemOf(err error) *Problem { return asError(err).Problem() }

// validationError converts a VA error into the challenge's error.
func validationError(err error) *Error {
	var ve interface {
		ProblemType() string
		ProblemDetail() string
	}
	if errors.As(err, &ve) {
		return &Error{Kind: KindValidation, Type: strings.TrimPrefix(ve.ProblemType(), ErrorNS), Detail: ve.ProblemDetail()}
	}
	return &Error{Kind: KindInternal, Detail: "validation failed", cause: err}
}
