package ca

import (
	"errors"
	"fmt"
)

// Kind classifies an Error so front ends can map it to a status code
// (for example HTTP 400 for BadCSR, 403 for PolicyViolation/Unauthorized).
type Kind string

// Error kinds.
const (
	KindBadCSR          Kind = "bad_csr"          // the CSR is malformed, too large or its signature is wrong
	KindBadRequest      Kind = "bad_request"      // another malformed argument
	KindPolicyViolation Kind = "policy_violation" // the profile forbids what was asked (name, key, TTL)
	KindUnauthorized    Kind = "unauthorized"     // the caller's grant check refused a name
	KindNotFound        Kind = "not_found"        // unknown serial, profile or issuer
	KindConflict        Kind = "conflict"         // already revoked, already initialised
	KindNotInitialized  Kind = "not_initialized"  // no hierarchy yet
	KindLint            Kind = "lint"             // pre-issuance lint blocked the certificate
	KindForbidden       Kind = "forbidden"        // not allowed through this operation (a CA profile through Sign, an issuer through Revoke)
	KindIssuerUnusable  Kind = "issuer_unusable"  // the issuer's certificate is revoked or expired: nothing is issued from it
	KindInternal        Kind = "internal"         // custody, storage or a bug
)

// Error is the error type every Authority method returns (possibly wrapped).
// Use errors.As to read its Kind.
type Error struct {
	Kind Kind
	Op   string // the operation, e.g. "sign"
	Msg  string // what was wrong, for humans
	Err  error  // the cause, if any
}

func (e *Error) Error() string {
	s := "ca: " + e.Op + ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Sentinel errors, matched with errors.Is through the *Error that wraps them.
var (
	// ErrAlreadyInitialized: InitHierarchy found issuers already recorded. The
	// hierarchy is never silently regenerated.
	ErrAlreadyInitialized = errors.New("CA hierarchy already initialized")
	// ErrNotInitialized: the CA has no active issuer yet.
	ErrNotInitialized = errors.New("CA hierarchy not initialized")
	// ErrCSRTooLarge: the CSR exceeds MaxCSRSize.
	ErrCSRTooLarge = errors.New("CSR too large")
	// ErrCAProfile: Sign was asked for a CA profile; subordinate CAs are
	// issued only by SignIntermediate, an administrative operation.
	ErrCAProfile = errors.New("CA profiles are not selectable for signing")
	// ErrIssuerCertificate: Revoke was asked to revoke a CA certificate;
	// only RevokeIssuer, an administrative operation, does that.
	ErrIssuerCertificate = errors.New("issuer certificates are revoked only through the hierarchy")
	// ErrNoNameConstraints: SignIntermediate was given no permitted subtree.
	ErrNoNameConstraints = errors.New("a subordinate CA needs name constraints")
	// ErrIssuerRevoked and ErrIssuerExpired: issuance refused because the
	// issuing certificate (or one above it) is revoked or expired.
	ErrIssuerRevoked = errors.New("issuer certificate revoked")
	ErrIssuerExpired = errors.New("issuer certificate expired")
)

func errf(kind Kind, op string, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Op: op, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// KindOf returns err's Kind, or KindInternal if err carries no *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}
