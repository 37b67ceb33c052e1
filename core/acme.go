package core

import (
	"time"

	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/issuer/validation"
)

// acmeValidationWait lets most clients skip one polling round (lego and
// certbot poll at one second or more).
const acmeValidationWait = 500 * time.Millisecond

// OpenACME builds the ACME server (RA + WFE) and its validation authority
// for an activation; defaultBase is its base URL unless acme.base_url is
// set.
func (c *Core) OpenACME(a *Unsealed, defaultBase func() string) (*acme.Server, error) {
	cfg := c.opts.Config
	ac := cfg.ACME
	// Loopback is a validation target only in dev mode (or by an explicit
	// acme.validation.allow entry).
	va, err := validation.New(validation.Config{
		HTTP01Port: ac.HTTP01Port, TLSALPN01Port: ac.TLSALPN01Port, DNSResolver: ac.DNSResolver,
		CAAIdentities: ac.CAAIdentities, Logger: c.log,
		AllowLoopback: cfg.Dev, AllowCIDRs: ac.Validation.Allow, DenyCIDRs: ac.Validation.Deny,
	})
	if err != nil {
		return nil, err
	}
	base := ac.BaseURL
	if base == "" {
		base = defaultBase()
	}
	// The implicit provisioner is closed outside dev mode: EAB keys from
	// `sigil acme eab create`, and no IP identifiers. Dev mode keeps the
	// open directory a laptop test wants.
	provs := []acme.Provisioner{{Name: "default", CAAIdentities: ac.CAAIdentities}}
	if cfg.Dev {
		provs[0].Open, provs[0].AllowAnyIP = true, true
	}
	if len(ac.Provisioners) > 0 {
		provs = provs[:0]
		for _, p := range ac.Provisioners {
			ap := acme.Provisioner{Name: p.Name, Open: p.Open(), DNSSuffixes: p.DNSSuffixes,
				IPRanges: p.IPRanges, DefaultProfile: p.DefaultProfile, CAAIdentities: ac.CAAIdentities}
			if ap.Open {
				c.log.Warn("ACME provisioner is open: anyone who reaches it may register without an external account binding",
					"provisioner", p.Name)
			}
			if len(p.Profiles) > 0 {
				ap.Profiles = map[string]acme.Profile{}
				for name, caProfile := range p.Profiles {
					ap.Profiles[name] = acme.Profile{CAProfile: caProfile}
				}
			}
			provs = append(provs, ap)
		}
	}
	rate := func(r config.ACMERate) acme.Rate { return acme.Rate{PerSecond: r.PerSecond, Burst: r.Burst} }
	limits := acme.RateLimits{NewNonce: rate(ac.RateLimits.NewNonce), NewAccount: rate(ac.RateLimits.NewAccount),
		NewOrder: rate(ac.RateLimits.NewOrder)}
	// The embedded store's data directory is locked to one server, so
	// nothing the ACME server keeps need be shared: used nonces are kept in
	// memory, not written on every POST, and accounts are read once.
	local := c.opts.Store.Backend() == "sqlite"
	return acme.New(acme.Config{BaseURL: base, Provisioners: provs, ValidationWait: acmeValidationWait, RateLimits: limits,
		SingleNode: local},
		acme.Deps{CA: a.CA, VA: va, Store: c.opts.Store, Sealer: c.opts.Barrier, Logger: c.log})
}
