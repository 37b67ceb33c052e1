// Package validation is Sigil's validation authority (the VA role of
// Boulder's split): it proves control of an identifier by performing an
// ACME challenge (http-01, dns-01, tls-alpn-01) against the outside world,
// and checks CAA (RFC 8659). It knows nothing about accounts, orders or
// storage; the ACME server (the WFE/RA) calls Validate with the key
// authorization it expects.
//
// Everything it touches is untrusted: each validation runs under a bounded
// context, response bodies and redirect chains are capped, connections go
// only to the configured ports and to addresses the AddressPolicy allows
// (checked on every dial), and nothing a target sends back is echoed to the
// client beyond its length.
package validation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Challenge types.
const (
	HTTP01    = "http-01"
	DNS01     = "dns-01"
	TLSALPN01 = "tls-alpn-01"
)

// Identifier types (RFC 8555 §9.7.7, RFC 8738).
const (
	IdentifierDNS = "dns"
	IdentifierIP  = "ip"
)

// Defaults.
const (
	DefaultHTTP01Port    = 80
	DefaultHTTPSPort     = 443
	DefaultTLSALPN01Port = 443
	DefaultTimeout       = 15 * time.Second
	DefaultMaxBody       = 4 << 10
	maxRedirects         = 10
)

// Config configures the VA. Zero values are the production defaults.
type Config struct {
	// HTTP01Port is the port http-01 connects to (and plain-HTTP redirects
	// may name); default 80.
	HTTP01Port int
	// HTTPSPort is the only port an https redirect of http-01 may name;
	// default 443.
	HTTPSPort int
	// TLSALPN01Port is the port tls-alpn-01 connects to; default 443.
	TLSALPN01Port int
	// DNSResolver is the recursive resolver (HOST:PORT) for dns-01 TXT,
	// CAA and, unless LookupIP is set, address lookups. Empty: the first
	// nameserver of /etc/resolv.conf, queried directly. SystemResolver
	// ("system"): addresses and dns-01 TXT records through the system
	// resolver (/etc/hosts and nsswitch included), for private networks
	// whose names only it knows; CAA, which it cannot ask for, still goes
	// to the first nameserver of /etc/resolv.conf.
	DNSResolver string
	// LookupIP resolves a host name for http-01 and tls-alpn-01. Nil:
	// A/AAAA queries through DNSResolver (or the system resolver when
	// DNSResolver is empty). Tests point names at 127.0.0.1 with it.
	LookupIP func(ctx context.Context, host string) ([]net.IP, error)
	// CAAIdentities are the issuer domain names this CA recognises in CAA
	// issue/issuewild records. Empty disables CAA checking.
	CAAIdentities []string
	// Timeout bounds one validation, CAA included; default 15 s.
	Timeout time.Duration
	// MaxBody caps the http-01 response body read; default 4 KiB.
	MaxBody int64
	// UserAgent is sent with http-01 requests.
	UserAgent string
	// AllowLoopback lets validation connect to loopback addresses (dev
	// mode). AllowCIDRs and DenyCIDRs are the operator's address rules
	// (see AddressPolicy); a bad entry fails New.
	AllowLoopback bool
	AllowCIDRs    []string
	DenyCIDRs     []string
	Logger        *slog.Logger
}

// SystemResolver as Config.DNSResolver resolves through the system
// resolver.
const SystemResolver = "system"

// VA performs validations. It is safe for concurrent use.
type VA struct {
	cfg      Config
	resolver string        // HOST:PORT, resolved once at New
	system   *net.Resolver // DNSResolver "system": addresses and TXT through the OS
	policy   AddressPolicy
	logger   *slog.Logger
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*VA, error) {
	if cfg.HTTP01Port == 0 {
		cfg.HTTP01Port = DefaultHTTP01Port
	}
	if cfg.HTTPSPort == 0 {
		cfg.HTTPSPort = DefaultHTTPSPort
	}
	if cfg.TLSALPN01Port == 0 {
		cfg.TLSALPN01Port = DefaultTLSALPN01Port
	}
	for _, p := range []int{cfg.HTTP01Port, cfg.HTTPSPort, cfg.TLSALPN01Port} {
		if p < 1 || p > 65535 {
			return nil, fmt.Errorf("validation: port %d out of range", p)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "Sigil-ACME-VA/1"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	v := &VA{cfg: cfg, logger: cfg.Logger, policy: AddressPolicy{AllowLoopback: cfg.AllowLoopback}}
	var err error
	if v.policy.Allow, err = ParsePrefixes(cfg.AllowCIDRs); err != nil {
		return nil, fmt.Errorf("validation: allowed addresses: %w", err)
	}
	if v.policy.Deny, err = ParsePrefixes(cfg.DenyCIDRs); err != nil {
		return nil, fmt.Errorf("validation: denied addresses: %w", err)
	}
	if cfg.DNSResolver == SystemResolver {
		v.system = &net.Resolver{}
	}
	if cfg.DNSResolver != "" && v.system == nil {
		if _, _, err := net.SplitHostPort(cfg.DNSResolver); err != nil {
			return nil, fmt.Errorf("validation: DNS resolver %q: want HOST:PORT: %w", cfg.DNSResolver, err)
		}
		v.resolver = cfg.DNSResolver
	} else {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err == nil && len(cc.Servers) > 0 {
			v.resolver = net.JoinHostPort(cc.Servers[0], cc.Port)
		} else {
			v.resolver = net.JoinHostPort("127.0.0.1", "53")
		}
	}
	return v, nil
}

// Request is one challenge to validate.
type Request struct {
	IdentifierType   string // IdentifierDNS or IdentifierIP
	Value            string // the DNS name (without "*.") or the IP address
	Wildcard         bool   // the order asked for "*." + Value (CAA issuewild)
	Challenge        string // HTTP01, DNS01 or TLSALPN01
	Token            string
	KeyAuthorization string // token "." base64url(JWK thumbprint)
}

// Error is a validation failure. Type is the ACME error type without the
// "urn:ietf:params:acme:error:" prefix (connection, dns, caa, tls,
// incorrectResponse, unauthorized, malformed, serverInternal).
type Error struct {
	Type   string
	Detail string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Type + ": " + e.Detail + ": " + e.Err.Error()
	}
	return e.Type + ": " + e.Detail
}

func (e *Error) Unwrap() error { return e.Err }

// ProblemType is the full ACME error type URN.
func (e *Error) ProblemType() string { return "urn:ietf:params:acme:error:" + e.Type }

// ProblemDetail is the detail for the client (the cause is appended: it
// describes what the VA saw on the network, which the client controls).
func (e *Error) ProblemDetail() string {
	if e.Err != nil {
		return e.Detail + ": " + e.Err.Error()
	}
	return e.Detail
}

func fail(typ string, err error, format string, args ...any) *Error {
	return &Error{Type: typ, Detail: fmt.Sprintf(format, args...), Err: err}
}

// Validate performs the challenge and the CAA check, side by side as
// Boulder does (the CAA climb is several DNS round trips, the challenge a
// lookup and a fetch). A failed challenge is the error reported; with the
// challenge passed, a CAA refusal is. It returns nil on success and an
// *Error otherwise, and never runs longer than the configured timeout (or
// ctx).
func (v *VA) Validate(ctx context.Context, req Request) error {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	defer cancel()
	start := time.Now()
	caa := make(chan error, 1)
	go func() { caa <- v.checkCAA(ctx, req) }()
	err := v.validate(ctx, req)
	if err != nil {
		cancel() // the CAA answer no longer matters
		<-caa
	} else {
		err = <-caa
	}
	v.logger.InfoContext(ctx, "acme validation", "challenge", req.Challenge, "identifier", req.IdentifierType+":"+req.Value,
		"ok", err == nil, "duration", time.Since(start), "error", errString(err))
	return err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (v *VA) validate(ctx context.Context, req Request) error {
	switch req.IdentifierType {
	case IdentifierDNS:
		if _, ok := dns.IsDomainName(req.Value); !ok || req.Value == "" {
			return fail("malformed", nil, "invalid DNS name %q", req.Value)
		}
	case IdentifierIP:
		if net.ParseIP(req.Value) == nil {
			return fail("malformed", nil, "invalid IP address %q", req.Value)
		}
	default:
		return fail("unsupportedIdentifier", nil, "identifier type %q", req.IdentifierType)
	}
	if req.Token == "" || req.KeyAuthorization == "" {
		return fail("malformed", nil, "missing token or key authorization")
	}
	switch req.Challenge {
	case HTTP01:
		return v.validateHTTP01(ctx, req)
	case DNS01:
		if req.IdentifierType != IdentifierDNS {
			return fail("malformed", nil, "dns-01 applies to DNS identifiers only")
		}
		return v.validateDNS01(ctx, req)
	case TLSALPN01:
		return v.validateTLSALPN01(ctx, req)
	}
	return fail("malformed", nil, "unsupported challenge type %q", req.Challenge)
}

// lookupIP resolves host to addresses (a literal IP resolves to itself).
func (v *VA) lookupIP(ctx context.Context, host string) ([]net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}, nil
	}
	if v.cfg.LookupIP != nil {
		return v.cfg.LookupIP(ctx, host)
	}
	if v.system != nil {
		addrs, err := v.system.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, fail("dns", err, "resolving %s through the system resolver", host)
		}
		ips := make([]net.IP, 0, len(addrs))
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
		return ips, nil
	}
	// A and AAAA are asked at once: one round trip of waiting, not two.
	types := []uint16{dns.TypeA, dns.TypeAAAA}
	answers := make([][]dns.RR, len(types))
	errs := make([]error, len(types))
	var wg sync.WaitGroup
	for i, qt := range types {
		wg.Go(func() { answers[i], errs[i] = v.query(ctx, host, qt) })
	}
	wg.Wait()
	var ips []net.IP
	var firstErr error
	for i, rrs := range answers {
		if errs[i] != nil {
			if firstErr == nil {
				firstErr = errs[i]
			}
			continue
		}
		for _, rr := range rrs {
			switch r := rr.(type) {
			case *dns.A:
				ips = append(ips, r.A)
			case *dns.AAAA:
				ips = append(ips, r.AAAA)
			}
		}
	}
	if len(ips) == 0 {
		if firstErr == nil {
			firstErr = errors.New("no A or AAAA records")
		}
		return nil, firstErr
	}
	return ips, nil
}

// CheckAddress reports whether validation may connect to ip (nil) or why
// not (wrapping ErrAddressRefused). The ACME server applies it to IP
// identifiers at newOrder.
func (v *VA) CheckAddress(ip net.IP) error { return v.policy.CheckIP(ip) }

// dialAny connects to each allowed address of host in turn on port. The
// dialer's Control hook applies the address policy again to the address
// actually connected to.
func (v *VA) dialAny(ctx context.Context, host string, port int) (net.Conn, error) {
	ips, err := v.lookupIP(ctx, host)
	if err != nil {
		return nil, fail("dns", err, "resolving %s", host)
	}
	d := net.Dialer{Control: v.policy.control}
	var lastErr error
	tried := 0
	for _, ip := range ips {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		if err := v.policy.Check(a); err != nil {
			lastErr = err
			continue
		}
		if tried >= 4 {
			break // bound the attempts a hostile zone can make us do
		}
		tried++
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(a.Unmap().String(), strconv.Itoa(port)))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	if tried == 0 && lastErr != nil {
		return nil, fail("connection", lastErr, "no address of %s may be used for validation", host)
	}
	return nil, fail("connection", lastErr, "connecting to %s port %d", host, port)
}
