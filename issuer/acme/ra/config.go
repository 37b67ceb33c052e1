package ra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

// CA is what the RA needs from the certificate authority; *ca.Authority
// satisfies it.
type CA interface {
	Sign(ctx context.Context, req ca.SignRequest) (*ca.Issued, error)
	Revoke(ctx context.Context, serial string, reason int) error
	Get(ctx context.Context, serial string) (*storage.Certificate, error)
	Issuers() []ca.IssuerInfo
}

// VA validates challenges (the RA→VA interface); *validation.VA satisfies
// it. A failure should be a *validation.Error (any error with a
// ProblemType() string method keeps its ACME error type).
type VA interface {
	Validate(ctx context.Context, req validation.Request) error
}

// Sealer encrypts secrets bound to (kind, id); *barrier.Barrier satisfies it.
type Sealer interface {
	Seal(ctx context.Context, kind, id string, plaintext []byte) ([]byte, error)
	Open(ctx context.Context, kind, id string, sealed []byte) ([]byte, error)
}

// Store is the storage the RA uses; storage.Store satisfies it.
type Store interface {
	ACME() storage.ACME
	InTx(ctx context.Context, fn func(tx storage.Repos) error) error
}

// Deps are the RA's collaborators.
type Deps struct {
	CA     CA
	VA     VA
	Store  Store
	Sealer Sealer // seals EAB HMAC keys at rest
	Logger *slog.Logger
}

// DefaultCertLifetime is the lifetime of ACME certificates whose profile
// sets none: above the 30 days before expiry at which common clients
// (certbot, lego, acme.sh) renew, so they do not renew on every run, and in
// line with the public Web PKI's move to 45 days. Shorter lifetimes are a
// profile's explicit choice; ARI (RFC 9773) tells clients exactly when.
const DefaultCertLifetime = 45 * 24 * time.Hour

// Profile maps an ACME profile name to a CA signing profile.
type Profile struct {
	CAProfile   string        // ca profile name, e.g. "server"
	Description string        // shown in the directory's meta.profiles
	TTL         time.Duration // 0: DefaultCertLifetime, within the CA profile's maximum
}

// Provisioner is one ACME endpoint family: /acme/NAME/directory.
type Provisioner struct {
	// Name is the path segment; letters, digits, '-', '_' and '.', and not
	// one of the resource names (directory, new-nonce, …).
	Name string
	// Open lets anyone who reaches the directory register an account
	// without an External Account Binding. The zero value requires EAB:
	// opening a directory is an explicit choice.
	Open           bool
	TermsOfService string // URL; when set, newAccount must agree to it
	Website        string
	// CAAIdentities are listed in the directory's meta.caaIdentities.
	CAAIdentities []string
	// Profiles by ACME name; empty: {"default": the CA's "server" profile}.
	Profiles map[string]Profile
	// DefaultProfile is used when newOrder names none; default: "default"
	// if present, else the sole or first (sorted) profile.
	DefaultProfile string
	// DNSSuffixes restricts DNS identifiers to these domains and their
	// subdomains ("example.com" allows example.com and *.example.com);
	// empty allows any name. IPRanges (CIDRs) likewise for IP identifiers;
	// empty forbids IP identifiers unless AllowAnyIP. Either way the VA's
	// address policy (no loopback outside dev mode, no link-local, …)
	// applies on top.
	DNSSuffixes []string
	IPRanges    []string
	AllowAnyIP  bool
	// Challenges enabled; empty: http-01, dns-01 and tls-alpn-01.
	Challenges []string
	// MaxIdentifiers per order; default 100.
	MaxIdentifiers int
	// MaxPendingOrders per account (a rate limit shared by every node, as
	// it is counted in storage); default 300. More get rateLimited.
	MaxPendingOrders int

	ipNets []*net.IPNet
	def    string // resolved default profile
}

// Config configures the RA.
type Config struct {
	// Provisioners served; at least one.
	Provisioners []Provisioner
	// DefaultProvisioner names the provisioner served at the base URL
	// itself; default: the first.
	DefaultProvisioner string
	OrderLifetime      time.Duration // pending orders and authorizations; default 7 days
	AuthzLifetime      time.Duration // valid authorizations (reuse window); default 30 days
	// ValidationWorkers bounds concurrent validations; default 32.
	ValidationWorkers int
	// ValidationWait is how long a challenge response may wait for its
	// (asynchronous) validation before answering "processing"; 0 (the
	// default) answers at once. A few hundred milliseconds lets most
	// clients skip a polling round (lego and certbot poll at ≥1 s).
	ValidationWait time.Duration
	// SignTimeout bounds one finalize's call to the CA; default 30 s.
	SignTimeout time.Duration
	// CAARecheckAge: at finalize, CAA is checked again for every
	// authorization validated longer ago than this (CA/B BR 3.2.2.8);
	// default 8 hours. Only a VA with CAA identities configured checks.
	CAARecheckAge time.Duration
	// SingleNode: this process is the only one writing its store (the
	// embedded store, whose data directory is locked to one server), so
	// the RA keeps the accounts it reads in memory and drops a copy when it
	// writes that account. With several nodes on one database it must be
	// false: a node would keep using an account another node deactivated
	// or rolled over.
	SingleNode bool
	Now        func() time.Time
}

var provisionerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// caProfiles is what *ca.Authority tells about its profiles.
type caProfiles interface {
	ProfileNames() []string
	Profile(name string) (ca.ProfileConfig, bool)
}

func (c *Config) check(authority CA) error {
	if len(c.Provisioners) == 0 {
		return errors.New("acme: no provisioners")
	}
	// Work on copies: check fills in defaults and must not write through
	// to the caller's slices and maps.
	c.Provisioners = slices.Clone(c.Provisioners)
	seen := map[string]bool{}
	for i := range c.Provisioners {
		p := &c.Provisioners[i]
		p.Profiles = maps.Clone(p.Profiles)
		p.DNSSuffixes = slices.Clone(p.DNSSuffixes)
		p.Challenges = slices.Clone(p.Challenges)
		p.ipNets = nil
		if !provisionerName.MatchString(p.Name) {
			return fmt.Errorf("acme: invalid provisioner name %q", p.Name)
		}
		if seen[p.Name] {
			return fmt.Errorf("acme: duplicate provisioner %q", p.Name)
		}
		seen[p.Name] = true
		if len(p.Profiles) == 0 {
			p.Profiles = map[string]Profile{"default": {CAProfile: ca.ProfileServer, Description: "TLS server certificate"}}
		}
		p.def = p.DefaultProfile
		if p.def == "" {
			if _, ok := p.Profiles["default"]; ok {
				p.def = "default"
			} else {
				p.def = slices.Sorted(maps.Keys(p.Profiles))[0]
			}
		}
		if _, ok := p.Profiles[p.def]; !ok {
			return fmt.Errorf("acme: provisioner %q: default profile %q not defined", p.Name, p.def)
		}
		if err := p.checkProfiles(authority); err != nil {
			return err
		}
		for _, r := range p.IPRanges {
			_, n, err := net.ParseCIDR(r)
			if err != nil {
				return fmt.Errorf("acme: provisioner %q: IP range %q: %w", p.Name, r, err)
			}
			p.ipNets = append(p.ipNets, n)
		}
		if len(p.Challenges) == 0 {
			p.Challenges = []string{validation.HTTP01, validation.DNS01, validation.TLSALPN01}
		}
		for _, ch := range p.Challenges {
			switch ch {
			case validation.HTTP01, validation.DNS01, validation.TLSALPN01:
			default:
				return fmt.Errorf("acme: provisioner %q: unknown challenge %q", p.Name, ch)
			}
		}
		if p.MaxIdentifiers <= 0 {
			p.MaxIdentifiers = 100
		}
		if p.MaxPendingOrders <= 0 {
			p.MaxPendingOrders = 300
		}
		for i, s := range p.DNSSuffixes {
			p.DNSSuffixes[i] = strings.ToLower(strings.Trim(s, "."))
		}
	}
	if c.DefaultProvisioner == "" {
		c.DefaultProvisioner = c.Provisioners[0].Name
	}
	if !seen[c.DefaultProvisioner] {
		return fmt.Errorf("acme: default provisioner %q not defined", c.DefaultProvisioner)
	}
	if c.OrderLifetime <= 0 {
		c.OrderLifetime = 7 * 24 * time.Hour
	}
	if c.AuthzLifetime <= 0 {
		c.AuthzLifetime = 30 * 24 * time.Hour
	}
	if c.ValidationWorkers <= 0 {
		c.ValidationWorkers = 32
	}
	if c.ValidationWait < 0 || c.ValidationWait > 5*time.Second {
		return fmt.Errorf("acme: validation wait %v out of range (0-5s)", c.ValidationWait)
	}
	if c.SignTimeout <= 0 {
		c.SignTimeout = 30 * time.Second
	}
	if c.CAARecheckAge <= 0 {
		c.CAARecheckAge = 8 * time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// checkProfiles verifies every ACME profile maps to a CA profile, when the
// CA can list them (*ca.Authority can), and gives profiles without a TTL
// DefaultCertLifetime, or the CA profile's own default when that profile's
// maximum is shorter (a short-lived CA profile stays short).
func (p *Provisioner) checkProfiles(authority CA) error {
	lister, ok := authority.(caProfiles)
	for name, pr := range p.Profiles {
		if ok && !slices.Contains(lister.ProfileNames(), pr.CAProfile) {
			return fmt.Errorf("acme: provisioner %q profile %q: CA profile %q does not exist (have %v)", p.Name, name, pr.CAProfile, lister.ProfileNames())
		}
		if pr.TTL != 0 {
			continue
		}
		pr.TTL = DefaultCertLifetime
		if ok {
			if cp, found := lister.Profile(pr.CAProfile); found && cp.MaxTTL > 0 && cp.MaxTTL < DefaultCertLifetime {
				pr.TTL = 0
			}
		}
		p.Profiles[name] = pr
	}
	return nil
}

// allowsDNS reports whether the provisioner may issue for name (no "*.").
func (p *Provisioner) allowsDNS(name string) bool {
	return allowsDNS(p.DNSSuffixes, name)
}

func allowsDNS(suffixes []string, name string) bool {
	if len(suffixes) == 0 {
		return true
	}
	for _, s := range suffixes {
		if name == s || strings.HasSuffix(name, "."+s) {
			return true
		}
	}
	return false
}

func (p *Provisioner) allowsIP(ip net.IP) bool {
	if p.AllowAnyIP {
		return true
	}
	for _, n := range p.ipNets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

func (p *Provisioner) allowsChallenge(t string) bool { return slices.Contains(p.Challenges, t) }

// ResolvedDefaultProfile is the profile newOrder uses when it names none.
func (p *Provisioner) ResolvedDefaultProfile() string { return p.def }
