package validation

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/miekg/dns"
)

// maxDNSAnswers bounds how many records of an answer the VA looks at.
const maxDNSAnswers = 100

// query asks the configured recursive resolver for name/qtype over UDP,
// retrying over TCP when the answer is truncated. NXDOMAIN and NODATA
// return no records and no error; other failures return a *Error.
func (v *VA) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	m.SetEdns0(4096, false)
	c := &dns.Client{Net: "udp", UDPSize: 4096}
	resp, _, err := c.ExchangeContext(ctx, m, v.resolver)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, v.resolver)
	}
	if err != nil {
		return nil, fail("dns", err, "querying %s %s", dns.TypeToString[qtype], name)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return nil, fail("dns", nil, "querying %s %s: %s", dns.TypeToString[qtype], name, dns.RcodeToString[resp.Rcode])
	}
	var out []dns.RR
	for i, rr := range resp.Answer {
		if i >= maxDNSAnswers {
			break
		}
		if rr.Header().Rrtype == qtype {
			out = append(out, rr)
		}
	}
	return out, nil
}

// KeyAuthorizationDigest is the dns-01 TXT value for a key authorization:
// base64url(SHA-256(keyAuthorization)) without padding (RFC 8555 §8.4).
func KeyAuthorizationDigest(keyAuthorization string) string {
	sum := sha256.Sum256([]byte(keyAuthorization))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func (v *VA) validateDNS01(ctx context.Context, req Request) error {
	name := "_acme-challenge." + strings.TrimSuffix(req.Value, ".")
	txts, err := v.lookupTXT(ctx, name)
	if err != nil {
		return err
	}
	if len(txts) == 0 {
		return fail("unauthorized", nil, "no TXT record at %s", name)
	}
	want := KeyAuthorizationDigest(req.KeyAuthorization)
	for _, t := range txts {
		if t == want {
			return nil
		}
	}
	return fail("incorrectResponse", nil, "no TXT record at %s matches the key authorization (%d found)", name, len(txts))
}

// lookupTXT returns name's TXT records, each one string.
func (v *VA) lookupTXT(ctx context.Context, name string) ([]string, error) {
	if v.system != nil {
		txts, err := v.system.LookupTXT(ctx, name)
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return nil, nil
		}
		if err != nil {
			return nil, fail("dns", err, "querying TXT %s through the system resolver", name)
		}
		return txts, nil
	}
	rrs, err := v.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// CheckCAA checks CAA on its own, bounded by the configured timeout: the
// ACME server calls it again at finalize for authorizations validated long
// enough ago that CAA may have changed (CA/B BR 3.2.2.8: 8 hours). With no
// CAA identities configured it does nothing.
func (v *VA) CheckCAA(ctx context.Context, req Request) error {
	if len(v.cfg.CAAIdentities) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	defer cancel()
	err := v.checkCAA(ctx, req)
	v.logger.InfoContext(ctx, "acme CAA recheck", "identifier", req.IdentifierType+":"+req.Value, "ok", err == nil, "error", errString(err))
	return err
}

// checkCAA applies RFC 8659: find the relevant record set by climbing from
// the name towards the root, then permit issuance if it is empty or names
// one of the configured identities. IP identifiers have no CAA.
func (v *VA) checkCAA(ctx context.Context, req Request) error {
	if len(v.cfg.CAAIdentities) == 0 || req.IdentifierType != IdentifierDNS {
		return nil
	}
	name := strings.TrimSuffix(strings.ToLower(req.Value), ".")
	for name != "" {
		rrs, err := v.query(ctx, name, dns.TypeCAA)
		if err != nil {
			return fail("caa", err, "looking up CAA for %s", name)
		}
		if len(rrs) > 0 {
			return v.evalCAA(req, name, rrs)
		}
		_, parent, ok := strings.Cut(name, ".")
		if !ok {
			break
		}
		name = parent
	}
	return nil
}

func (v *VA) evalCAA(req Request, at string, rrs []dns.RR) error {
	var issue, issueWild []*dns.CAA
	for _, rr := range rrs {
		c := rr.(*dns.CAA)
		switch strings.ToLower(c.Tag) {
		case "issue":
			issue = append(issue, c)
		case "issuewild":
			issueWild = append(issueWild, c)
		case "iodef", "issuemail", "issuevmc":
		default:
			if c.Flag&128 != 0 {
				return fail("caa", nil, "CAA at %s has an unknown critical property %q", at, c.Tag)
			}
		}
	}
	relevant := issue
	if req.Wildcard && len(issueWild) > 0 {
		relevant = issueWild
	}
	if len(relevant) == 0 {
		return nil // no issue restriction at all
	}
	for _, c := range relevant {
		if v.caaPermits(c.Value) {
			return nil
		}
	}
	return fail("caa", nil, "CAA records at %s do not authorize this CA (%s)", at, strings.Join(v.cfg.CAAIdentities, ", "))
}

// caaPermits parses "issuer-domain-name; params" and compares the domain.
func (v *VA) caaPermits(value string) bool {
	dom, _, _ := strings.Cut(value, ";")
	dom = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(dom)), ".")
	if dom == "" {
		return false
	}
	for _, id := range v.cfg.CAAIdentities {
		if dom == strings.TrimSuffix(strings.ToLower(id), ".") {
			return true
		}
	}
	return false
}

// String describes the configuration (for logs).
func (v *VA) String() string {
	return fmt.Sprintf("VA(http-01 port %d, tls-alpn-01 port %d, resolver %s)", v.cfg.HTTP01Port, v.cfg.TLSALPN01Port, v.resolver)
}
