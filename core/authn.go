package core

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage"
)

// Authentication happens in two steps, so that each credential is checked
// once. The transport's early gate, which runs before a request body is
// read, calls CheckToken or CheckCertificate: cheap checks that spend
// nothing. Authenticate then finishes with what they returned once the
// call proceeds: it spends a use of a limited token, or checks the SVID
// against the inventory (revocation included), and resolves the policies.

// Credential is a credential the early gate checked, carried with the call
// to Authenticate. The zero Credential is no credential.
type Credential struct {
	token *auth.CheckedToken
	chain *auth.VerifiedChain
}

// Errors of authentication, the same whichever step refuses.
var (
	ErrInvalidToken       = errs.New(errs.Unauthenticated, "invalid or expired token")
	ErrWrongPurpose       = errs.New(errs.PermissionDenied, "this token is a join or wrapping token: use it with `sigil identity enroll` or `sigil unwrap`")
	ErrMissingCredentials = errs.New(errs.Unauthenticated, `missing credentials: send "authorization: Bearer TOKEN" (set SIGIL_TOKEN) or a client certificate Sigil issued (SIGIL_CLIENT_CERT)`)
	ErrBadAuthHeader      = errs.New(errs.Unauthenticated, `authorization header must be "Bearer TOKEN"`)
)

// BearerToken returns the token of the authorization header's values (the
// first counts), "" if there is none.
func BearerToken(authorization []string) (string, error) {
	if len(authorization) == 0 {
		return "", nil
	}
	tok, ok := strings.CutPrefix(authorization[0], "Bearer ")
	if !ok {
		return "", ErrBadAuthHeader
	}
	if tok = strings.TrimSpace(tok); tok == "" {
		return "", ErrBadAuthHeader
	}
	return tok, nil
}

// CertCheck is a connection's client-certificate check, made once: the
// chain cannot change on a connection. The zero value is ready.
type CertCheck struct {
	once sync.Once
	cred Credential
	err  error
}

// CheckCredential is the early gate's check of a non-public call: it
// requires a credential and checks it without spending anything, the
// bearer token of the authorization header if there is one, else the
// client certificate chain (through cache, once per connection, when
// cache is not nil). Authenticate finishes the check.
func (c *Core) CheckCredential(ctx context.Context, authorization []string, chain []*x509.Certificate, cache *CertCheck) (Credential, error) {
	if _, err := c.Unsealed(); err != nil {
		return Credential{}, err
	}
	tok, err := BearerToken(authorization)
	if err != nil {
		return Credential{}, err
	}
	if tok != "" {
		return c.CheckToken(ctx, tok)
	}
	if len(chain) == 0 {
		return Credential{}, ErrMissingCredentials
	}
	if cache == nil {
		return c.CheckCertificate(chain)
	}
	cache.once.Do(func() { cache.cred, cache.err = c.CheckCertificate(chain) })
	return cache.cred, cache.err
}

// tokenError turns a token verification failure into the caller's error.
func tokenError(err error) error {
	switch {
	case errors.Is(err, auth.ErrInvalidToken):
		return ErrInvalidToken
	case errors.Is(err, auth.ErrWrongPurpose):
		return ErrWrongPurpose
	}
	return errs.Wrap(errs.Internal, "token verification", err)
}

// CheckToken checks a bearer token without spending a use: one HMAC and,
// for an unlimited token, a cache hit.
func (c *Core) CheckToken(ctx context.Context, token string) (Credential, error) {
	u, err := c.Unsealed()
	if err != nil {
		return Credential{}, err
	}
	ct, err := u.Tokens.Check(ctx, token)
	if err != nil {
		return Credential{}, tokenError(err)
	}
	return Credential{token: ct}, nil
}

// CheckCertificate verifies a client certificate chain (leaf first) as an
// X.509-SVID through Sigil's own issuers, reading no storage.
func (c *Core) CheckCertificate(chain []*x509.Certificate) (Credential, error) {
	v, err := c.workloads()
	if err != nil {
		return Credential{}, err
	}
	vc, err := v.VerifyChain(chain)
	if err != nil {
		return Credential{}, c.svidError(err, "it does not chain to this Sigil's CA as a workload identity: ")
	}
	return Credential{chain: vc}, nil
}

// Authenticate finishes what the gate's check began and returns the caller
// with the policies that apply to it now.
func (c *Core) Authenticate(ctx context.Context, cred Credential) (*Caller, error) {
	var id *auth.Identity
	switch {
	case cred.token != nil:
		u, err := c.Unsealed()
		if err != nil {
			return nil, err
		}
		if id, err = u.Tokens.Spend(ctx, cred.token); err != nil {
			return nil, tokenError(err)
		}
	case cred.chain != nil:
		v, err := c.workloads()
		if err != nil {
			return nil, err
		}
		if id, err = v.Identify(ctx, cred.chain); err != nil {
			return nil, c.svidError(err, "")
		}
	default:
		return nil, ErrMissingCredentials
	}
	return c.NewCaller(ctx, id)
}

// workloads is the verifier of workloads' SVIDs over the current hierarchy.
func (c *Core) workloads() (*auth.SVIDVerifier, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	v, err := auth.NewSVIDVerifier(c.opts.Config.CA.TrustDomain, svidInventory{u.CA})
	if err != nil {
		return nil, OpError("workload authentication", err)
	}
	return v, nil
}

// svidError is the caller's error for a refused client certificate, with
// what refused it; the reason is logged too, as operators debug mTLS from
// the server's side.
func (c *Core) svidError(err error, what string) error {
	if !errors.Is(err, auth.ErrSVIDRejected) {
		return OpError("check client certificate", err)
	}
	c.log.Warn("workload authentication refused", "reason", err.Error())
	reason := strings.TrimPrefix(err.Error(), auth.ErrSVIDRejected.Error()+": ")
	return errs.New(errs.Unauthenticated, "client certificate not accepted: "+what+reason)
}

// svidInventory adapts the CA to what workload authentication needs.
type svidInventory struct{ a *ca.Authority }

func (c svidInventory) SVIDIssuers() []auth.SVIDIssuer {
	list := c.a.Issuers()
	out := make([]auth.SVIDIssuer, 0, len(list))
	for _, is := range list {
		out = append(out, auth.SVIDIssuer{ID: is.ID, Root: is.Kind == ca.KindRoot, Certificate: is.Certificate})
	}
	return out
}

func (c svidInventory) Certificate(ctx context.Context, serial string) (*storage.Certificate, error) {
	rec, err := c.a.Get(ctx, serial)
	// A serial the inventory cannot even hold (negative, too long) is as
	// absent as an unknown one.
	if k := ca.KindOf(err); k == ca.KindNotFound || k == ca.KindBadRequest {
		return nil, fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	}
	return rec, err
}

func (c svidInventory) IsWorkloadProfile(name string) bool {
	p, ok := c.a.Profile(name)
	return ok && p.SPIFFE
}
