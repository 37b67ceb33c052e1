package core

import (
	"context"
	"errors"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/engines/keys"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/envelope"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/lease"
	"github.com/sigil-ca/sigil/policy"
	"github.com/sigil-ca/sigil/storage"
)

// OpError gives err from operation op its domain kind, with op in the
// message: the transports map kinds once. Errors of no known kind stay
// Internal: the caller sees "OP: internal error" and the log the cause.
func OpError(op string, err error) error {
	var ce *ca.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce) && CAKind(ce.Kind) != errs.Internal:
		// The CA's messages already say what was wrong.
		return &errs.Error{Kind: CAKind(ce.Kind), Op: op, Msg: ce.Error(), Err: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, storage.ErrNotFound):
		return &errs.Error{Kind: errs.NotFound, Op: op, Msg: op + ": not found", Err: err}
	}
	if k, ok := SentinelKind(err); ok {
		return errs.Wrap(k, op, err)
	}
	if e, ok := errs.As(err); ok {
		return errs.Wrap(e.Kind, op, err)
	}
	return errs.Wrap(errs.Internal, op, err)
}

// CAKind maps the CA's error kinds to domain kinds (codes unchanged from
// before: a CA conflict has always been FailedPrecondition).
func CAKind(k ca.Kind) errs.Kind {
	switch k {
	case ca.KindNotFound:
		return errs.NotFound
	case ca.KindBadRequest, ca.KindBadCSR, ca.KindPolicyViolation, ca.KindLint:
		return errs.InvalidArgument
	case ca.KindUnauthorized, ca.KindForbidden:
		return errs.PermissionDenied
	case ca.KindConflict, ca.KindNotInitialized, ca.KindIssuerUnusable:
		return errs.FailedPrecondition
	}
	return errs.Internal
}

// SentinelKind gives the domain packages' sentinel errors (engines,
// leases, transit, policies, ACME, envelopes) their kind, and ok=false
// for any other error. Until those packages return errs.Error themselves,
// this table is where their errors get a kind.
func SentinelKind(err error) (errs.Kind, bool) {
	var pe *policy.ParseError
	switch {
	case errors.Is(err, engines.ErrMountNotFound), errors.Is(err, engines.ErrRoleNotFound),
		errors.Is(err, lease.ErrNotFound), errors.Is(err, engines.ErrUnknownType),
		errors.Is(err, transit.ErrKeyNotFound), errors.Is(err, acme.ErrNotFound):
		return errs.NotFound, true
	case errors.Is(err, kv.ErrNotFound), errors.Is(err, kv.ErrDeleted), errors.Is(err, kv.ErrDestroyed):
		return errs.NotFound, true
	case errors.Is(err, kv.ErrCASMismatch), errors.Is(err, kv.ErrCASRequired):
		return errs.FailedPrecondition, true
	case errors.Is(err, kv.ErrTooLarge):
		return errs.InvalidArgument, true
	case errors.Is(err, engines.ErrMountExists), errors.Is(err, transit.ErrKeyExists):
		return errs.Conflict, true
	case errors.Is(err, engines.ErrInvalidPath), errors.Is(err, engines.ErrInvalidConfig), errors.Is(err, engines.ErrInvalidRequest),
		errors.Is(err, lease.ErrInvalidRequest), errors.Is(err, envelope.ErrUnsupported), errors.Is(err, envelope.ErrMalformed),
		errors.Is(err, transit.ErrInvalidCiphertext), errors.Is(err, transit.ErrWrongKeyType), errors.Is(err, transit.ErrTooLarge),
		errors.As(err, &pe), errors.Is(err, policy.ErrInvalid):
		return errs.InvalidArgument, true
	case errors.Is(err, engines.ErrRejected):
		// The backend refused for a reason retrying will not fix (a missing
		// privilege, a bad statement): an operator must act.
		return errs.FailedPrecondition, true
	case errors.Is(err, engines.ErrMountInUse), errors.Is(err, engines.ErrNotConfigured),
		errors.Is(err, lease.ErrNotRenewable), errors.Is(err, lease.ErrNotActive), errors.Is(err, lease.ErrMaxTTL),
		errors.Is(err, transit.ErrVersionTooOld):
		return errs.FailedPrecondition, true
	case errors.Is(err, lease.ErrQuotaExceeded):
		return errs.ResourceExhausted, true
	case errors.Is(err, engines.ErrNotSupported):
		return errs.Unimplemented, true
	case errors.Is(err, keys.ErrPrincipalNotAllowed):
		return errs.PermissionDenied, true
	case errors.Is(err, lease.ErrMintFailed), errors.Is(err, lease.ErrRevocationFailed):
		// The backend refused (unreachable database, bad statement): the
		// operator needs the reason; it never carries the secret.
		return errs.Unavailable, true
	}
	return errs.Internal, false
}

// Public classifies a domain error for a transport: its kind and the
// message the caller may see (an internal cause never is). ok is false for
// an error of no domain kind: a status a transport built, a context error,
// or a bug.
func Public(err error) (kind errs.Kind, msg string, ok bool) {
	cancelled := errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
	if e, ok := errs.As(err); ok && (e.Kind != errs.Internal || !cancelled) {
		return e.Kind, e.Public(), true
	}
	var ce *ca.Error
	switch {
	case cancelled:
		return errs.Internal, "", false
	case errors.As(err, &ce):
		if k := CAKind(ce.Kind); k != errs.Internal {
			return k, errs.Shorten(ce.Error()), true
		}
		return errs.Internal, "internal error", true
	}
	if k, ok := SentinelKind(err); ok {
		return k, errs.Shorten(err.Error()), true
	}
	if errors.Is(err, storage.ErrNotFound) {
		return errs.NotFound, "not found", true
	}
	return errs.Internal, "", false
}
