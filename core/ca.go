package core

import (
	"context"
	"errors"
	"fmt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/audit"
	"github.com/sigil-ca/sigil/auth"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
)

// maxTTLSeconds is the largest ttl_seconds that converts to a
// time.Duration without overflowing (about 292 years).
const maxTTLSeconds = int64(math.MaxInt64 / int64(time.Second))

// RequestTTL converts a certificate request's ttl_seconds, refusing what
// cannot be a lifetime; the CA refuses below its minimum and caps above
// the profile's maximum with a warning.
func RequestTTL(secs int64) (time.Duration, error) {
	switch {
	case secs < 0:
		return 0, invalid("ttl_seconds (--ttl) must not be negative")
	case secs > maxTTLSeconds:
		return 0, invalid(fmt.Sprintf("ttl_seconds (--ttl) %d is out of range: at most %d", secs, maxTTLSeconds))
	}
	return time.Duration(secs) * time.Second, nil
}

// WorkloadProfile is the profile of workload identities (X.509-SVIDs).
const WorkloadProfile = "workload"

// SignRequest asks for a leaf certificate.
type SignRequest struct {
	CSR        []byte
	Profile    string // "server" when empty
	TTLSeconds int64
	// Audit, if set, is the call's success record, written in the
	// transaction that records the certificate (see CallAudit).
	Audit *CallAudit
}

// Sign issues a leaf certificate; the CA refuses CA profiles whatever the
// caller's grants. It needs create on ca/sign/PROFILE, with one exception:
// a workload authenticated by its SVID may have the workload profile sign
// a CSR whose only name is its own SPIFFE ID (renewing itself) with no
// grant, unless that SVID is bound to a lease or a registration entry
// (selfRenewal). The rate limit is applied after authorisation, so a denied caller
// cannot drain the caller's bucket.
func (c *Core) Sign(ctx context.Context, caller *Caller, req SignRequest) (*ca.Issued, error) {
	if req.Profile == "" {
		req.Profile = "server"
	}
	if err := CheckProfileName(req.Profile); err != nil {
		return nil, err
	}
	path := "ca/sign/" + req.Profile
	authorize := func(n ca.Names) error { return caller.NamesAllowed(n.All()) }
	if err := caller.Authorize(path, policy.Create); err != nil {
		self, why := c.selfRenewal(caller, req.Profile)
		if why != "" {
			return nil, caller.Deny(path, "without create on "+path+" a workload renews only its own SVID, and "+why)
		}
		if self == "" {
			return nil, err
		}
		caller.AllowWithoutGrant(path, "a workload may renew its own identity ("+self+") without a grant")
		authorize = func(n ca.Names) error {
			if names := n.All(); len(names) != 1 || names[0] != self {
				return caller.Deny(path, fmt.Sprintf("without create on %s a workload may renew only its own identity %s, not %v", path, self, names))
			}
			return nil
		}
	}
	if err := c.limit(caller); err != nil {
		return nil, err
	}
	if len(req.CSR) == 0 {
		return nil, invalid("csr is required")
	}
	ttl, err := RequestTTL(req.TTLSeconds)
	if err != nil {
		return nil, err
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	staged, err := c.stageAudit(ctx, u, req.Audit)
	if err != nil {
		return nil, err
	}
	creq := ca.SignRequest{CSR: req.CSR, Profile: req.Profile, TTL: ttl, Requester: caller.Name(), Authorize: authorize}
	if staged != nil {
		// The audit record commits with the inventory row: if it cannot be
		// appended, the transaction rolls back and nothing is issued.
		// Certificates committed together append their records as one
		// batch (the log's head moved once per transaction).
		creq.InBatch = &ca.BatchWrite{Writer: u.Audit.Writer(), Item: staged}
	}
	issued, err := u.CA.Sign(ctx, creq)
	if staged != nil && errors.Is(err, audit.ErrSink) {
		return nil, c.auditFailed(ctx, "sign", err)
	}
	if err != nil {
		return nil, OpError("sign", err)
	}
	if staged != nil {
		if err := c.finishAudit(ctx, staged, req.Audit, "sign"); err != nil {
			return nil, err
		}
	}
	return issued, nil
}

// Inventory requesters Sigil records for certificates it issues on its own
// account rather than for the calling identity.
const (
	requesterJoin  = "join:"  // + the SPIFFE ID a join token enrolled
	requesterAgent = "agent:" // + the node whose registration entry it is
	requesterLease = "lease:" // + the lease an engine issued it under
)

// selfRenewal is the SPIFFE ID a caller may renew without a grant: its
// own, when it authenticated by its SVID and asks for the workload
// profile; "" otherwise. An SVID bound to a lease (an engine's) or to a
// registration entry (an agent's) is not renewed by itself: the lease's
// expiry or revocation, or the entry's deletion, would otherwise stop only
// the first certificate of an endless series. why says so when it is the
// reason.
func (c *Core) selfRenewal(caller *Caller, profile string) (self, why string) {
	if caller == nil || caller.Identity == nil || profile != WorkloadProfile {
		return "", ""
	}
	id := caller.Identity
	if id.TokenID != "" || id.SPIFFEID == "" {
		return "", ""
	}
	switch r := id.SVIDRequester; {
	case strings.HasPrefix(r, requesterLease):
		return "", fmt.Sprintf("this SVID was issued under %s and ends with it: mint a new one from the lease's role instead of renewing it", strings.TrimPrefix(r, requesterLease))
	case strings.HasPrefix(r, requesterAgent):
		return "", fmt.Sprintf("this SVID belongs to a registration entry of %s: the agent renews it while the entry exists", strings.TrimPrefix(r, requesterAgent))
	}
	return id.SPIFFEID, ""
}

// joinMetaKey marks a token as a join token and names the SPIFFE ID it
// enrolls. Join tokens carry no policy: they cannot call anything but
// Enroll.
const joinMetaKey = "join_spiffe_id"

// defaultJoinTTL is a join token's lifetime unless asked otherwise.
const defaultJoinTTL = 10 * time.Minute

// ValidSPIFFEID refuses what is not spiffe://TRUST-DOMAIN/PATH.
func ValidSPIFFEID(id string) error {
	// The SPIFFE ID rules, as the CA applies them when it issues the SVID
	// (ca/names.go), so a join token never names an ID Enroll would refuse.
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return invalid(fmt.Sprintf("spiffe_id %q: must be spiffe://TRUST-DOMAIN/PATH: %v", id, err))
	}
	// go-spiffe takes "." and ".." as trust domains; as DNS-like names
	// they have empty labels, and in a policy path (sys/agent/entries/..)
	// they would be dot segments.
	if slices.Contains(strings.Split(sid.TrustDomain().Name(), "."), "") {
		return invalid(fmt.Sprintf("spiffe_id %q: trust domain %q has an empty label", id, sid.TrustDomain().Name()))
	}
	return nil
}

// JoinToken is a created join token: its delivery and expiry.
type JoinToken struct {
	Delivery  *Delivery
	ExpiresAt time.Time
}

// CreateJoinToken makes a single-use token that enrolls spiffeID, sealed
// to the recipient (never wrapped). Besides create on
// sys/identity/join-tokens (checked by the authorization table), the
// caller's policies must allow spiffeID as a name (`names: uris`), as for
// issuing that SVID directly: a join token is that identity, and the grant
// would otherwise hand out any identity, an administrator's included.
func (c *Core) CreateJoinToken(ctx context.Context, caller *Caller, spiffeID string, ttl time.Duration, to *RecipientRef) (*JoinToken, error) {
	if ttl < 0 {
		return nil, invalid("ttl_seconds must not be negative")
	}
	if err := caller.NamesAllowed([]string{spiffeID}); err != nil {
		return nil, caller.Deny("sys/identity/join-tokens", fmt.Sprintf("a join token enrolls %s, which no policy of %s allows as a name (names: uris): %v", spiffeID, caller.Name(), err))
	}
	if ttl == 0 {
		ttl = defaultJoinTTL
	}
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	dest, err := c.Destination(ctx, to, 0)
	if err != nil {
		return nil, err
	}
	tok, rec, err := u.Tokens.Create(ctx, auth.CreateOptions{TTL: ttl, Uses: 1, Meta: map[string]string{auth.PurposeMeta: "join", joinMetaKey: spiffeID}})
	if err != nil {
		return nil, OpError("create join token", err)
	}
	d, err := c.Deliver(ctx, dest, Secret{BindingID: "join:" + spiffeID, Data: map[string]string{"token": tok}},
		func(ctx context.Context) error { return u.Tokens.Delete(ctx, rec.ID) })
	if err != nil {
		return nil, err
	}
	return &JoinToken{Delivery: d, ExpiresAt: rec.ExpiresAt}, nil
}

// Enroll spends a join token and issues the workload certificate for the
// one SPIFFE ID it enrolls.
func (c *Core) Enroll(ctx context.Context, joinToken string, csr []byte) (*ca.Issued, error) {
	u, err := c.Unsealed()
	if err != nil {
		return nil, err
	}
	if len(csr) == 0 {
		return nil, invalid("csr is required")
	}
	// Verifying spends the token's single use, so a second enrollment with
	// it fails whatever happens next.
	id, err := u.Tokens.VerifyPurpose(ctx, strings.TrimSpace(joinToken), "join")
	if errors.Is(err, auth.ErrInvalidToken) || errors.Is(err, auth.ErrWrongPurpose) {
		return nil, errs.New(errs.Unauthenticated, "invalid, expired or already used join token")
	}
	if err != nil {
		return nil, OpError("verify join token", err)
	}
	spiffeID := id.Meta[joinMetaKey]
	if spiffeID == "" {
		return nil, errs.New(errs.PermissionDenied, "not a join token")
	}
	issued, err := u.CA.Sign(ctx, ca.SignRequest{CSR: csr, Profile: WorkloadProfile, Requester: requesterJoin + spiffeID,
		Authorize: func(n ca.Names) error {
			if names := n.All(); !slices.Equal(names, []string{spiffeID}) {
				return errs.New(errs.PermissionDenied, fmt.Sprintf("this join token enrolls %s only, not %v", spiffeID, names))
			}
			return nil
		}})
	return issued, OpError("enroll", err)
}
