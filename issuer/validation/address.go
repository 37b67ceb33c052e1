package validation

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// ErrAddressRefused marks a connection the address policy refused.
var ErrAddressRefused = errors.New("address not allowed for validation")

// AddressPolicy decides which addresses the VA may connect to. It is
// applied to every dial (each http-01 redirect hop included) from the
// dialer's Control hook, that is to the address actually connected to after
// resolution, so a name cannot resolve to one address for a check and
// another for the connection (DNS rebinding).
//
// The decision, in order:
//  1. never: unspecified (0.0.0.0/8, ::), multicast, limited broadcast and
//     the cloud instance-metadata addresses (169.254.169.254,
//     169.254.170.2, fd00:ec2::254, 100.100.100.200, 192.0.0.192);
//  2. the operator's Allow and Deny prefixes: the longest matching prefix
//     decides, Deny winning a tie;
//  3. loopback only with AllowLoopback (dev mode);
//  4. link-local (169.254.0.0/16, fe80::/10) never;
//  5. anything else (public, RFC 1918, ULA, CGNAT) is allowed: a private
//     CA validates hosts on private networks.
type AddressPolicy struct {
	AllowLoopback bool
	Allow         []netip.Prefix
	Deny          []netip.Prefix
}

// metadataAddrs are cloud instance-metadata endpoints (AWS, ECS, AWS IPv6,
// Alibaba, Oracle). They hand out credentials to whoever asks from the
// host, so no configuration makes them a validation target.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"),
	netip.MustParseAddr("169.254.170.2"),
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("100.100.100.200"),
	netip.MustParseAddr("192.0.0.192"),
}

var (
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8") // Linux connects 0.x.y.z to the local host
	nat64       = netip.MustParsePrefix("64:ff9b::/96")
	broadcast   = netip.MustParseAddr("255.255.255.255")
)

// ParsePrefixes parses CIDRs (a bare address is its own /32 or /128).
func ParsePrefixes(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR or an IP address: %w", c, err)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Check returns nil if the VA may connect to ip, otherwise an error
// wrapping ErrAddressRefused that says why.
func (p *AddressPolicy) Check(ip netip.Addr) error {
	if !ip.IsValid() {
		return fmt.Errorf("%w: invalid address", ErrAddressRefused)
	}
	ip = ip.Unmap().WithZone("")
	if err := p.check(ip); err != nil {
		return err
	}
	// A NAT64 address reaches the IPv4 address it embeds.
	if nat64.Contains(ip) {
		b := ip.As16()
		if err := p.check(netip.AddrFrom4([4]byte(b[12:16]))); err != nil {
			return fmt.Errorf("%s embeds a refused IPv4 address: %w", ip, err)
		}
	}
	return nil
}

func (p *AddressPolicy) check(ip netip.Addr) error {
	refuse := func(why string) error { return fmt.Errorf("%w: %s is %s", ErrAddressRefused, ip, why) }
	switch {
	case ip.IsUnspecified() || thisNetwork.Contains(ip):
		return refuse("unspecified")
	case ip.IsMulticast() || ip == broadcast:
		return refuse("multicast or broadcast")
	}
	for _, m := range metadataAddrs {
		if ip == m {
			return refuse("a cloud metadata address")
		}
	}
	best, allow := -1, false
	for _, pr := range p.Allow {
		if pr.Contains(ip) && pr.Bits() > best {
			best, allow = pr.Bits(), true
		}
	}
	for _, pr := range p.Deny {
		if pr.Contains(ip) && pr.Bits() >= best {
			best, allow = pr.Bits(), false
		}
	}
	if best >= 0 {
		if allow {
			return nil
		}
		return refuse("in a denied range (acme.validation.deny)")
	}
	switch {
	case ip.IsLoopback():
		if p.AllowLoopback {
			return nil
		}
		return refuse("loopback (allowed only in dev mode or by acme.validation.allow)")
	case ip.IsLinkLocalUnicast():
		return refuse("link-local (allowed only by acme.validation.allow)")
	}
	return nil
}

// CheckIP is Check for a net.IP.
func (p *AddressPolicy) CheckIP(ip net.IP) error {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return fmt.Errorf("%w: invalid address", ErrAddressRefused)
	}
	return p.Check(a)
}

// control is a net.Dialer Control hook: it sees the address being
// connected to, after resolution, and refuses it before the connect.
func (p *AddressPolicy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q: %w", ErrAddressRefused, address, err)
	}
	return p.Check(ap.Addr())
}
