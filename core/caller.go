package core

import (
	"context"
	"fmt"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
)

// Caller is an authenticated caller as the use cases see it: who it is,
// what its policies grant, and the authorisation decision (with the path
// it was made on) and leases the audit record of the call will carry.
type Caller struct {
	Identity *auth.Identity
	Policies *policy.Set
	// Path and Decision are what the audit records; Decision is nil until
	// Authorize, AllowWithoutGrant or Deny decides, so the audit never
	// records "allowed" for a call nothing authorised.
	Path     string
	Decision *audit.Decision
	// LeaseIDs are the leases the call minted or acted on.
	LeaseIDs []string
	// AuditResponse is what a use case chose to audit of its reply (kv:
	// the version, and field names with HMACs of the values read).
	AuditResponse map[string]audit.Value
}

// NewCaller is the caller authenticated as id, with the policies that
// apply to it now.
func (c *Core) NewCaller(ctx context.Context, id *auth.Identity) (*Caller, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	eng, err := u.Policies.Engine(ctx)
	if err != nil {
		return nil, errs.Wrap(errs.Internal, "policy resolution", fmt.Errorf("load policies: %w", err))
	}
	return &Caller{Identity: id, Policies: eng.SetFor(policy.Subject{SPIFFEID: id.SPIFFEID, TokenID: id.TokenID, Policies: id.Policies,
		Metadata: identityMetadata(id.Meta)})}, nil
}

// Name is the caller's identity name ("" for a nil caller).
func (c *Caller) Name() string {
	if c == nil || c.Identity == nil {
		return ""
	}
	return c.Identity.Name
}

// Owner is the owner recorded on the leases the caller mints: the identity
// Sigil authenticated, never anything the client asserts.
func (c *Caller) Owner() string { return c.Name() }

// Authorize checks the caller's policies for capability cp on path and
// records the decision. Deny by default: a caller with no grant gets a
// permission error naming the path.
func (c *Caller) Authorize(path string, cp policy.Capability) error {
	if c == nil || c.Policies == nil {
		return errs.New(errs.PermissionDenied, "permission denied: unauthenticated call to "+path)
	}
	d := c.Policies.Allowed(path, cp)
	c.Path = path
	c.Decision = &audit.Decision{Allowed: d.Allowed, Reason: d.Reason}
	if !d.Allowed {
		return errs.New(errs.PermissionDenied, d.Err().Error())
	}
	return nil
}

// Allowed reports whether the caller's policies grant cp on path, without
// recording a decision.
func (c *Caller) Allowed(path string, cp policy.Capability) bool {
	return c != nil && c.Policies != nil && c.Policies.Allowed(path, cp).Allowed
}

// AllowWithoutGrant records a deliberate decision that this call needs no
// grant (it discloses or changes nothing beyond what the caller holds),
// with the reason the audit log shows.
func (c *Caller) AllowWithoutGrant(path, reason string) {
	if c != nil {
		c.Path = path
		c.Decision = &audit.Decision{Allowed: true, Reason: reason}
	}
}

// Deny refuses the call for a reason beyond the policy decision on path (an
// ownership or delegation rule), recording it so the audit never says
// "allowed" for a refused call.
func (c *Caller) Deny(path, reason string) error {
	if c != nil {
		c.Path = path
		c.Decision = &audit.Decision{Allowed: false, Reason: reason}
	}
	return errs.New(errs.PermissionDenied, "permission denied: "+reason)
}

// NamesAllowed is the grant check for the names a certificate will carry.
func (c *Caller) NamesAllowed(names []string) error {
	if c == nil || c.Policies == nil {
		return policy.ErrPermissionDenied
	}
	return c.Policies.NamesAllowed(names)
}

// addLease records a lease for the audit.
func (c *Caller) addLease(id string) {
	if c != nil {
		c.LeaseIDs = append(c.LeaseIDs, id)
	}
}

// limit applies the per-identity, per-path token bucket to minting and
// issuance. Use cases call it after authorisation (so a denied caller
// cannot drain the bucket), before any work.
func (c *Core) limit(caller *Caller) error {
	if caller == nil || c.limiter == nil {
		return nil
	}
	ok, wait := c.limiter.Allow(caller.Name() + "|" + caller.Path)
	if ok {
		return nil
	}
	return &errs.Error{Kind: errs.ResourceExhausted, RetryAfter: wait,
		Msg: fmt.Sprintf("rate limited on %s: retry after %v", caller.Path, wait.Round(time.Millisecond))}
}
