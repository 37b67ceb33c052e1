package ca

import (
	"crypto/x509"
	"net"
	"net/mail"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxNames bounds the SANs of one certificate.
const maxNames = 100

// checkNames collects the CSR's names and checks each against the profile.
func (a *Authority) checkNames(p *profile, csr *x509.CertificateRequest) (Names, error) {
	const op = "sign"
	bad := func(format string, args ...any) (Names, error) {
		return Names{}, errf(KindPolicyViolation, op, nil, "profile %q: "+format, append([]any{p.name}, args...)...)
	}
	var n Names
	total := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.URIs) + len(csr.EmailAddresses)
	if total > maxNames {
		return bad("%d names requested, at most %d allowed", total, maxNames)
	}
	if p.cfg.SPIFFE {
		// Checked before the URI patterns so the error says what is wrong
		// with the SPIFFE ID.
		if len(csr.URIs) != 1 {
			return bad("an X.509-SVID needs exactly one URI SAN (a SPIFFE ID), got %d", len(csr.URIs))
		}
		id, err := spiffeid.FromURI(csr.URIs[0])
		if err != nil {
			return Names{}, errf(KindPolicyViolation, op, err, "profile %q: URI %q is not a valid SPIFFE ID", p.name, csr.URIs[0])
		}
		if a.cfg.TrustDomain == "" || id.TrustDomain().Name() != a.cfg.TrustDomain {
			return bad("SPIFFE ID %q is outside trust domain %q", id, a.cfg.TrustDomain)
		}
		if id.Path() == "" {
			return bad("SPIFFE ID %q has no path: the trust domain ID identifies no workload", id)
		}
	}
	for _, d := range csr.DNSNames {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if err := validDNSName(d, p.cfg.AllowWildcard, p.cfg.AllowSingleLabel); err != "" {
			return bad("DNS name %q: %s", d, err)
		}
		if !matchAny(p.cfg.DNSPatterns, d, true) {
			return bad("DNS name %q is not allowed", d)
		}
		if !slices.Contains(n.DNSNames, d) {
			n.DNSNames = append(n.DNSNames, d)
		}
	}
	for _, ip := range csr.IPAddresses {
		if !ipAllowed(p, ip) {
			return bad("IP address %s is not allowed", ip)
		}
		n.IPs = append(n.IPs, ip)
	}
	for _, u := range csr.URIs {
		s := u.String()
		if !u.IsAbs() || u.Host == "" && u.Opaque == "" || u.User != nil {
			return bad("URI %q must be absolute, with a host and no user info", s)
		}
		if !matchAny(p.cfg.URIPatterns, s, false) {
			return bad("URI %q is not allowed", s)
		}
		n.URIs = append(n.URIs, u)
	}
	for _, e := range csr.EmailAddresses {
		addr, err := mail.ParseAddress(e)
		if err != nil || addr.Address != e || addr.Name != "" {
			return bad("email address %q is malformed", e)
		}
		at := strings.LastIndexByte(e, '@')
		e = e[:at+1] + strings.ToLower(e[at+1:])
		if msg := validDNSName(e[at+1:], false, false); msg != "" {
			return bad("email address %q: domain %s", e, msg)
		}
		if !matchAny(p.cfg.EmailPatterns, e, true) {
			return bad("email address %q is not allowed", e)
		}
		n.Emails = append(n.Emails, e)
	}
	if p.cfg.SPIFFE {
		// The subject carries no identity in an SVID; drop whatever common
		// name the CSR had rather than certify an unchecked name.
		return n, a.checkRegexp(p, n)
	}
	cn := csr.Subject.CommonName
	if cn != "" {
		switch {
		case isSAN(n, cn):
		case p.cfg.CommonNamePatterns != nil && matchAny(p.cfg.CommonNamePatterns, cn, false):
		case net.ParseIP(cn) != nil && ipAllowed(p, net.ParseIP(cn)):
			n.IPs = append(n.IPs, net.ParseIP(cn))
		case validDNSName(strings.ToLower(cn), p.cfg.AllowWildcard, false) == "" && strings.Contains(cn, ".") && matchAny(p.cfg.DNSPatterns, strings.ToLower(cn), true):
			// A DNS name only in the common name is copied to the SANs,
			// which is where verifiers look.
			cn = strings.ToLower(cn)
			n.DNSNames = append(n.DNSNames, cn)
		default:
			return bad("common name %q is not allowed", cn)
		}
		n.CommonName = cn
	}
	if len(n.DNSNames)+len(n.IPs)+len(n.URIs)+len(n.Emails) == 0 && !p.cfg.IsCA {
		return bad("the CSR requests no subject alternative name")
	}
	return n, a.checkRegexp(p, n)
}

func (a *Authority) checkRegexp(p *profile, n Names) error {
	if p.nameRE == nil {
		return nil
	}
	for _, s := range n.All() {
		if !p.nameRE.MatchString(s) {
			return errf(KindPolicyViolation, "sign", nil, "profile %q: name %q does not match %q", p.name, s, p.cfg.NameRegexp)
		}
	}
	return nil
}

func isSAN(n Names, s string) bool {
	for _, d := range n.DNSNames {
		if strings.EqualFold(d, s) {
			return true
		}
	}
	for _, ip := range n.IPs {
		if ip.String() == s {
			return true
		}
	}
	for _, u := range n.URIs {
		if u.String() == s {
			return true
		}
	}
	return slices.Contains(n.Emails, s)
}

func ipAllowed(p *profile, ip net.IP) bool {
	for _, r := range p.ipNets {
		if r.Contains(ip) {
			return true
		}
	}
	return false
}

// validDNSName returns "" if d is a syntactically valid DNS name (LDH
// labels, at most 253 characters, at least two labels unless singleLabel
// allows host names such as "localhost"), else why not.
func validDNSName(d string, wildcard, singleLabel bool) string {
	if len(d) == 0 || len(d) > 253 {
		return "must be 1-253 characters"
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 && !singleLabel {
		return "must have at least two labels"
	}
	for i, l := range labels {
		if l == "*" && i == 0 {
			if !wildcard {
				return "wildcards are not allowed by the profile"
			}
			continue
		}
		if len(l) == 0 || len(l) > 63 {
			return "labels must be 1-63 characters"
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c >= 'A' && c <= 'Z') {
				return "only letters, digits and hyphens are allowed in labels"
			}
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "labels must not start or end with a hyphen"
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "the last label must not be numeric"
	}
	return ""
}

// matchAny reports whether s matches one of the glob patterns ('*'
// matches any run of characters).
func matchAny(patterns []string, s string, fold bool) bool {
	if fold {
		s = strings.ToLower(s)
	}
	for _, p := range patterns {
		if fold {
			p = strings.ToLower(p)
		}
		if glob(p, s) {
			return true
		}
	}
	return false
}

// glob matches s against pattern with '*' as the only metacharacter, in
// linear time (no backtracking blow-up on hostile input).
func glob(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}
