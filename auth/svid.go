package auth

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-ca/sigil/storage"
)

// ErrSVIDRejected: a client certificate does not authenticate a workload.
// The wrapping error says why; callers answer Unauthenticated.
var ErrSVIDRejected = errors.New("client certificate not accepted")

// SVIDIssuer is one of Sigil's own CA certificates (a root or one of its
// intermediates), as recorded in the CA hierarchy.
type SVIDIssuer struct {
	ID          string
	Root        bool
	Certificate *x509.Certificate
}

// SVIDInventory is what workload authentication needs of the CA.
type SVIDInventory interface {
	// SVIDIssuers lists Sigil's own issuers: the only certificates a
	// workload's SVID may chain through.
	SVIDIssuers() []SVIDIssuer
	// Certificate returns the inventory record of a serial (lowercase hex),
	// or an error wrapping storage.ErrNotFound.
	Certificate(ctx context.Context, serial string) (*storage.Certificate, error)
	// IsWorkloadProfile reports whether the named profile issues
	// X.509-SVIDs.
	IsWorkloadProfile(name string) bool
}

// SVIDVerifier authenticates workloads by the X.509-SVID Sigil issued them.
//
// A certificate authenticates only if it is exactly one Sigil recorded:
// chaining to Sigil's root is not enough, because anything that can sign
// under the root (a mis-issued sub-CA, an operator's offline root used for
// something else) could then mint any identity. So the chain is built only
// from Sigil's own issuers, the presented leaf must be byte-identical to
// the inventory record of its serial and issued by the issuer that record
// names, under a workload profile, in the trust domain, not revoked and not
// expired; and the identity is the record's SPIFFE ID.
type SVIDVerifier struct {
	td  spiffeid.TrustDomain
	inv SVIDInventory
	now func() time.Time
}

// NewSVIDVerifier returns a verifier for workloads of trustDomain. An empty
// trust domain is allowed and authenticates no one (Sigil issues no SVIDs
// without one).
func NewSVIDVerifier(trustDomain string, inv SVIDInventory) (*SVIDVerifier, error) {
	v := &SVIDVerifier{inv: inv, now: time.Now}
	if trustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(trustDomain)
		if err != nil {
			return nil, fmt.Errorf("auth: trust domain %q: %w", trustDomain, err)
		}
		v.td = td
	}
	return v, nil
}

func rejected(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrSVIDRejected, fmt.Sprintf(format, args...))
}

// Authenticate checks the certificates a client presented (leaf first) and
// returns the workload's identity: VerifyChain, then Identify. Errors
// wrapping ErrSVIDRejected mean the certificate does not authenticate; any
// other error is an inventory failure.
func (v *SVIDVerifier) Authenticate(ctx context.Context, presented []*x509.Certificate) (*Identity, error) {
	c, err := v.VerifyChain(presented)
	if err != nil {
		return nil, err
	}
	return v.Identify(ctx, c)
}

// VerifiedChain is a client certificate that chains through Sigil's own
// issuers to its root, for client authentication: what VerifyChain found,
// without any storage read. A connection's chain cannot change, so the
// server's early gate verifies it once per connection and hands the result
// to Identify for each call.
type VerifiedChain struct {
	leaf     *x509.Certificate
	id       spiffeid.ID
	verified [][]*x509.Certificate
}

// VerifyChain checks that the presented leaf chains through Sigil's own
// issuers (presented intermediates are ignored) to its root, as an
// X.509-SVID for client authentication in the trust domain. It reads no
// storage, so it is cheap enough to run before a request body is read.
func (v *SVIDVerifier) VerifyChain(presented []*x509.Certificate) (*VerifiedChain, error) {
	if len(presented) == 0 {
		return nil, rejected("no client certificate")
	}
	if v.td.IsZero() {
		return nil, rejected("workload authentication is off: no trust domain is configured")
	}
	leaf := presented[0]
	// presented[1:] is ignored on purpose: intermediates come from Sigil's
	// hierarchy only, never from the client.
	var roots []*x509.Certificate
	chain := []*x509.Certificate{leaf}
	for _, is := range v.inv.SVIDIssuers() {
		if is.Root {
			roots = append(roots, is.Certificate)
		} else {
			chain = append(chain, is.Certificate)
		}
	}
	bundle := x509bundle.FromX509Authorities(v.td, roots)
	id, verified, err := x509svid.Verify(chain, bundle, x509svid.WithTime(v.now()))
	if err != nil {
		return nil, rejected("%v", err)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return nil, rejected("the certificate of %s is not for client authentication", id)
	}
	return &VerifiedChain{leaf: leaf, id: id, verified: verified}, nil
}

// Identify authenticates the workload of a verified chain from what Sigil
// recorded: the leaf must be byte-identical to the inventory record of its
// serial, issued (by one of Sigil's current issuers) under a workload
// profile in the trust domain, not revoked and not expired now. The
// identity is the record's SPIFFE ID.
func (v *SVIDVerifier) Identify(ctx context.Context, c *VerifiedChain) (*Identity, error) {
	leaf, now := c.leaf, v.now()
	for _, chain := range c.verified {
		for _, cert := range chain {
			// The chain may have been verified a while ago on this
			// connection: every certificate in it must still be valid.
			if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
				return nil, rejected("certificate %q in the client's chain is not valid now", cert.Subject.CommonName)
			}
		}
	}
	serial := leaf.SerialNumber.Text(16)
	rec, err := v.inv.Certificate(ctx, serial)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, rejected("serial %s is not in Sigil's inventory", serial)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: look up client certificate %s: %w", serial, err)
	}
	// Not secret, but compared in constant time like every credential.
	if subtle.ConstantTimeCompare(rec.DER, leaf.Raw) != 1 {
		return nil, rejected("the certificate is not the one Sigil issued with serial %s", serial)
	}
	if !issuedBy(c.verified, v.inv.SVIDIssuers(), rec.IssuerID) {
		return nil, rejected("serial %s was not issued by Sigil's issuer %s", serial, rec.IssuerID)
	}
	if !v.inv.IsWorkloadProfile(rec.Profile) {
		return nil, rejected("serial %s was issued with profile %q, which does not issue workload identities (SVIDs)", serial, rec.Profile)
	}
	if rec.Status == storage.CertRevoked {
		return nil, rejected("client certificate %s is revoked", serial)
	}
	if !now.Before(rec.NotAfter) {
		return nil, rejected("client certificate %s expired at %s", serial, rec.NotAfter.UTC().Format(time.RFC3339))
	}

	// The identity is the record's, not the presented certificate's.
	if len(rec.URIs) != 1 {
		return nil, rejected("serial %s records %d URIs, not one SPIFFE ID", serial, len(rec.URIs))
	}
	recID, err := spiffeid.FromString(rec.URIs[0])
	if err != nil {
		return nil, rejected("serial %s records %q, not a SPIFFE ID: %v", serial, rec.URIs[0], err)
	}
	if !recID.MemberOf(v.td) {
		return nil, rejected("%s is outside trust domain %s", recID, v.td)
	}
	if recID != c.id {
		// Unreachable while the DER is identical; kept so the record and
		// the certificate can never silently disagree.
		return nil, rejected("serial %s records %s, the certificate says %s", serial, recID, c.id)
	}
	name := recID.String()
	return &Identity{Name: name, SPIFFEID: name, ExpiresAt: rec.NotAfter, SVIDRequester: rec.Requester}, nil
}

// issuedBy reports whether a verified chain's leaf was signed by the issuer
// with id.
func issuedBy(verified [][]*x509.Certificate, issuers []SVIDIssuer, id string) bool {
	var want *x509.Certificate
	for _, is := range issuers {
		if is.ID == id {
			want = is.Certificate
			break
		}
	}
	if want == nil {
		return false
	}
	for _, c := range verified {
		if len(c) > 1 && c[1].Equal(want) {
			return true
		}
	}
	return false
}
