package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// Subordinate CAs for callers, revocation of issuers, and the check that
// nothing is issued from a revoked or expired issuer. These are the
// administrative counterparts of Sign and Revoke (security review #1, #3).

// NameConstraints are the permitted subtrees of a subordinate CA. At least
// one is required. A name form with no permitted subtree is excluded
// entirely, so the sub-CA can sign only names the operator listed (RFC 5280
// applies constraints per name form: without this, a CA constrained to DNS
// names could still sign any IP address or SPIFFE ID).
type NameConstraints struct {
	// DNS domains: "example.org" permits it and every name below it;
	// ".example.org" only names below it.
	DNS []string
	// IPRanges are CIDRs, e.g. "10.20.0.0/16".
	IPRanges []string
	// URIDomains are the hosts URIs may name (for SPIFFE IDs, the trust
	// domain), with the same leading-dot rule as DNS.
	URIDomains []string
}

// maxConstraints bounds each list: verifiers check every name against every
// subtree.
const maxConstraints = 64

// noneHost is the only permitted host of URI and email names when the
// operator permitted none. ".invalid" can never resolve (RFC 2606), and a
// permitted subtree, unlike an empty excluded one, is a fully qualified
// name as RFC 5280 4.2.1.10 requires of URI constraints.
const noneHost = "none.invalid"

// compiled validates c and returns the parsed IP ranges.
func (c NameConstraints) compiled() (dns []string, ips []*net.IPNet, uris []string, err error) {
	const op = "sign intermediate"
	if len(c.DNS)+len(c.IPRanges)+len(c.URIDomains) == 0 {
		return nil, nil, nil, errf(KindBadRequest, op, ErrNoNameConstraints,
			"give at least one permitted subtree (--permitted-dns, --permitted-ip or --permitted-uri): an unconstrained subordinate CA could sign any name")
	}
	if len(c.DNS) > maxConstraints || len(c.IPRanges) > maxConstraints || len(c.URIDomains) > maxConstraints {
		return nil, nil, nil, errf(KindBadRequest, op, nil, "at most %d permitted subtrees of each kind", maxConstraints)
	}
	domain := func(kind, d string) (string, error) {
		d = strings.ToLower(strings.TrimSpace(d))
		if why := validDNSName(strings.TrimPrefix(d, "."), false, true); why != "" {
			return "", errf(KindBadRequest, op, nil, "permitted %s %q: %s", kind, d, why)
		}
		return d, nil
	}
	for _, d := range c.DNS {
		v, err := domain("DNS domain", d)
		if err != nil {
			return nil, nil, nil, err
		}
		dns = append(dns, v)
	}
	for _, d := range c.URIDomains {
		v, err := domain("URI domain", d)
		if err != nil {
			return nil, nil, nil, err
		}
		uris = append(uris, v)
	}
	for _, r := range c.IPRanges {
		ip, n, err := net.ParseCIDR(strings.TrimSpace(r))
		if err != nil {
			return nil, nil, nil, errf(KindBadRequest, op, err, "permitted IP range %q: want a CIDR such as 10.20.0.0/16", r)
		}
		if !ip.Equal(n.IP) {
			return nil, nil, nil, errf(KindBadRequest, op, nil, "permitted IP range %q has host bits set: did you mean %s?", r, n)
		}
		if ones, _ := n.Mask.Size(); ones == 0 {
			return nil, nil, nil, errf(KindBadRequest, op, nil, "permitted IP range %q permits every address: name the networks the CA may sign for", r)
		}
		if v4 := n.IP.To4(); v4 != nil {
			n = &net.IPNet{IP: v4, Mask: n.Mask[len(n.Mask)-4:]}
		}
		ips = append(ips, n)
	}
	return dns, ips, uris, nil
}

// apply sets the critical name constraints extension on t.
func applyConstraints(t *x509.Certificate, dns []string, ips []*net.IPNet, uris []string) {
	t.PermittedDNSDomainsCritical = true
	t.PermittedDNSDomains = dns
	if len(dns) == 0 {
		// A zero-length dNSName matches every name (CA/B BR 7.1.2.5.2).
		t.ExcludedDNSDomains = []string{""}
	}
	t.PermittedIPRanges = ips
	if len(ips) == 0 {
		t.ExcludedIPRanges = []*net.IPNet{
			{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		}
	}
	t.PermittedURIDomains = uris
	if len(uris) == 0 {
		t.PermittedURIDomains = []string{noneHost}
	}
	// Email is never a permitted form for a caller's sub-CA.
	t.PermittedEmailAddresses = []string{noneHost}
}

// SubCARequest asks for a subordinate CA certificate.
type SubCARequest struct {
	CSR         []byte
	Profile     string        // a CA profile; default "intermediate"
	TTL         time.Duration // 0: the profile's default
	Requester   string
	Constraints NameConstraints
}

// SignIntermediate signs a subordinate CA for a caller with the root, under
// a CA profile, with critical name constraints limiting it to the permitted
// subtrees. It is administrative: front ends must authorise it as such.
func (a *Authority) SignIntermediate(ctx context.Context, req SubCARequest) (*Issued, error) {
	const op = "sign intermediate"
	name := req.Profile
	if name == "" {
		name = ProfileIntermediate
	}
	p, err := a.signingProfile(op, name)
	if err != nil {
		return nil, err
	}
	if !p.cfg.IsCA {
		return nil, errf(KindBadRequest, op, nil, "profile %q does not issue CA certificates: use `sigil ca sign`", p.name)
	}
	dns, ips, uris, err := req.Constraints.compiled()
	if err != nil {
		return nil, err
	}
	iss, err := a.signWith(ctx, op, p, SignRequest{CSR: req.CSR, TTL: req.TTL, Requester: req.Requester},
		func(t *x509.Certificate) { applyConstraints(t, dns, ips, uris) })
	if err != nil {
		return nil, err
	}
	a.log.Warn("ca: subordinate CA issued", "serial", iss.Record.Serial, "subject", iss.Record.Subject,
		"requester", req.Requester, "permitted_dns", dns, "permitted_ip", fmt.Sprint(ips), "permitted_uri", uris)
	return iss, nil
}

// issuerRecheck bounds how long a cached "not revoked" verdict on an issuer
// is trusted: another instance sharing the database may have revoked it.
const issuerRecheck = 30 * time.Second

// usable refuses issuance from an issuer whose certificate, or any
// certificate above it, has expired, or whose certificate is revoked. Each
// refusal is logged at error level and counted (Config.IssuanceRefused).
func (a *Authority) usable(ctx context.Context, op string, is *issuer, profile, requester string) error {
	now := a.now()
	refuse := func(reason string, cause error, format string, args ...any) error {
		e := errf(KindIssuerUnusable, op, cause, format, args...)
		a.log.Error("ca: issuance refused", "reason", reason, "issuer", is.rec.ID, "profile", profile, "requester", requester, "err", e.Msg)
		if a.cfg.IssuanceRefused != nil {
			a.cfg.IssuanceRefused(reason)
		}
		return e
	}
	for _, c := range is.chain {
		if !now.Before(c.NotAfter) {
			return refuse("issuer_expired", ErrIssuerExpired,
				"issuer %s cannot issue: certificate %q expired at %s; rotate the intermediate (`sigil ca intermediate rotate`)",
				is.rec.ID, c.Subject.String(), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	revoked, err := a.issuerRevoked(ctx, is, now)
	if err != nil {
		return err
	}
	if revoked {
		return refuse("issuer_revoked", ErrIssuerRevoked,
			"issuer %s cannot issue: its certificate (serial %s) is revoked; install a new intermediate (`sigil ca intermediate rotate` or `import`)",
			is.rec.ID, serialHex(is.cert.SerialNumber))
	}
	return nil
}

// issuerRevoked reports whether the inventory records is's certificate as
// revoked. Roots and intermediates signed by an external root have no
// record: their revocation is the external root's business.
func (a *Authority) issuerRevoked(ctx context.Context, is *issuer, now time.Time) (bool, error) {
	if is.rec.Kind == KindRoot {
		return false, nil
	}
	is.revMu.Lock()
	defer is.revMu.Unlock()
	if is.revoked || (!is.revChecked.IsZero() && now.Sub(is.revChecked) < issuerRecheck && now.After(is.revChecked)) {
		return is.revoked, nil
	}
	rec, err := a.store.Certificates().Get(ctx, serialHex(is.cert.SerialNumber))
	switch {
	case errors.Is(err, storage.ErrNotFound):
		is.revChecked = now
		return false, nil
	case err != nil:
		// Fail closed: an unknown status is not "not revoked".
		return false, errf(KindInternal, "sign", err, "checking the revocation status of issuer %s", is.rec.ID)
	}
	is.revoked = rec.Status == storage.CertRevoked && bytes.Equal(rec.DER, is.cert.Raw)
	is.revChecked = now
	return is.revoked, nil
}

// RevokeIssuerRequest names a CA certificate to revoke: one of Sigil's own
// intermediates (by IssuerID or Serial) or a subordinate CA it signed for a
// caller (by Serial).
type RevokeIssuerRequest struct {
	IssuerID string
	Serial   string
	Reason   int
	// Rotate, when the target is the active intermediate, first signs a new
	// intermediate with the root and makes it active.
	Rotate bool
	// Force revokes the active intermediate without a replacement: issuance
	// stops until one is installed.
	Force bool
}

// RevokeIssuerResult says what was revoked and, after a rotation, the new
// active intermediate.
type RevokeIssuerResult struct {
	Serial    string
	IssuerID  string // empty for a caller's subordinate CA
	NewIssuer *IssuerInfo
}

// RevokeIssuer revokes a CA certificate. It is the only way to: Revoke
// refuses them. The active intermediate is revoked only with Rotate (a new
// one takes over first) or Force (issuance stops). A root cannot be revoked.
func (a *Authority) RevokeIssuer(ctx context.Context, req RevokeIssuerRequest) (RevokeIssuerResult, error) {
	const op = "revoke issuer"
	if (req.IssuerID == "") == (req.Serial == "") {
		return RevokeIssuerResult{}, errf(KindBadRequest, op, nil, "name exactly one of an issuer ID or a serial")
	}
	var target *issuer
	serial := req.Serial
	if req.IssuerID != "" {
		if target = a.issuerByID(req.IssuerID); target == nil {
			return RevokeIssuerResult{}, errf(KindNotFound, op, nil, "no issuer %q (see `sigil ca issuers`)", req.IssuerID)
		}
		serial = serialHex(target.cert.SerialNumber)
	}
	if target != nil && target.rec.Kind == KindRoot {
		return RevokeIssuerResult{}, errf(KindBadRequest, op, nil, "issuer %s is a root: a root is not revoked, it is distrusted by relying parties and replaced", target.rec.ID)
	}
	rec, err := a.revocable(ctx, op, serial, req.Reason)
	if KindOf(err) == KindNotFound && target != nil {
		return RevokeIssuerResult{}, errf(KindBadRequest, op, err, "issuer %s was signed by an external root: revoke it there", target.rec.ID)
	} else if err != nil {
		return RevokeIssuerResult{}, err
	}
	if !a.isCACert(rec) {
		return RevokeIssuerResult{}, errf(KindBadRequest, op, nil, "certificate %s is not a CA certificate: revoke it with `sigil ca revoke`", rec.Serial)
	}
	if target == nil {
		for _, in := range a.Issuers() {
			if in.Kind == KindIntermediate && bytes.Equal(in.Certificate.Raw, rec.DER) {
				target = a.issuerByID(in.ID)
			}
		}
	}
	if rec.Status == storage.CertRevoked {
		return RevokeIssuerResult{}, errf(KindConflict, op, nil, "certificate %s is already revoked", rec.Serial)
	}
	res := RevokeIssuerResult{Serial: rec.Serial}
	if target != nil {
		res.IssuerID = target.rec.ID
		if active := a.activeIssuer(); active != nil && active.rec.ID == target.rec.ID {
			switch {
			case req.Rotate:
				in, err := a.RotateIntermediate(ctx)
				if err != nil {
					return RevokeIssuerResult{}, fmt.Errorf("ca: revoke issuer: rotating before revoking %s: %w", target.rec.ID, err)
				}
				res.NewIssuer = &in
			case !req.Force:
				return RevokeIssuerResult{}, errf(KindConflict, op, nil,
					"issuer %s is the active intermediate: pass --rotate to install a new one first, or --force to stop issuance until one is installed", target.rec.ID)
			}
		}
	}
	if err := a.revokeRecord(ctx, op, rec, req.Reason); err != nil {
		return RevokeIssuerResult{}, err
	}
	// Look the issuer up again: a rotation reloaded the hierarchy.
	if cur := a.issuerByID(res.IssuerID); cur != nil {
		cur.revMu.Lock()
		cur.revoked = true
		cur.revMu.Unlock()
	}
	a.log.Warn("ca: issuer certificate revoked", "serial", rec.Serial, "issuer", res.IssuerID, "reason", req.Reason,
		"rotated", res.NewIssuer != nil, "forced", req.Force)
	return res, nil
}
