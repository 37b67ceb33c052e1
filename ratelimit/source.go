package ratelimit

import (
	"net"
	"net/netip"
)

// SourceKey is the key per-source limits count a client under, from its
// peer address ("host:port" or a bare host): the IP address (the port
// changes per connection), or for IPv6 the /64 a single host usually holds
// whole, so rotating addresses within it does not buy a fresh budget. An
// address that does not parse is its own key. The peer is the TCP peer:
// behind a proxy every client shares the proxy's key.
func SourceKey(addr string) string {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		if p, err := a.WithZone("").Prefix(64); err == nil {
			return p.String()
		}
	}
	return a.String()
}
