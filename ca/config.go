package ca

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-ca/sigil/hsm"
)

// Config configures an Authority. Zero fields take the documented defaults.
type Config struct {
	// PublicURL is the base URL relying parties reach the CA's HTTP endpoints
	// at; CRL distribution points and AIA URLs are built from it.
	PublicURL string
	// TrustDomain is the SPIFFE trust domain the workload profile issues in
	// (e.g. "example.org"). Empty disables the workload profile.
	TrustDomain string
	// Profiles overrides built-in profiles by name, or adds new ones.
	Profiles map[string]ProfileConfig
	// CRLShards is how many CRL shards each issuer has (default 16). A
	// certificate's shard is fixed at issuance, so changing this only moves
	// new certificates.
	CRLShards int
	// CRLLifetime is a CRL's nextUpdate - thisUpdate (default 24h). CRLs are
	// regenerated once a third of it is left.
	CRLLifetime time.Duration
	// OCSPLifetime is an OCSP response's nextUpdate - thisUpdate (default 12h).
	OCSPLifetime time.Duration
	// OCSPSignerTTL is the validity of delegated OCSP signing certificates
	// (default 7 days); they are re-issued once a third of it is left.
	OCSPSignerTTL time.Duration
	// PruneGrace is how long past NotAfter an expired certificate stays in
	// the inventory (default 30 days).
	PruneGrace time.Duration
	// PruneBatch is how many certificates PruneExpired deletes per
	// transaction (default 500).
	PruneBatch int
	// KeyType is the default key type for CA keys (default ECDSA P-256).
	KeyType hsm.KeyType
	// Now returns the current time; tests set it. Default time.Now.
	Now func() time.Time
	// IssuanceRefused, if set, is called each time issuance is refused
	// because the issuer is unusable, with the reason ("issuer_revoked",
	// "issuer_expired"): the server counts it in a metric.
	IssuanceRefused func(reason string)
}

// Defaults.
const (
	DefaultCRLShards     = 16
	DefaultCRLLifetime   = 24 * time.Hour
	DefaultOCSPLifetime  = 12 * time.Hour
	DefaultOCSPSignerTTL = 7 * 24 * time.Hour
	DefaultPruneGrace    = 30 * 24 * time.Hour
	DefaultPruneBatch    = 500
	// MaxCSRSize bounds a CSR (PEM or DER) before it is parsed.
	MaxCSRSize = 64 << 10
	// backdate absorbs relying parties' clock skew.
	backdate = time.Minute
	// MinTTL is the shortest certificate lifetime a caller may ask for: a
	// shorter one is almost certainly a unit mistake (--ttl 1ns), and it
	// would be shorter than the backdating.
	MinTTL = time.Minute
)

func (c Config) withDefaults() (Config, error) {
	if c.PublicURL == "" {
		return c, fmt.Errorf("ca: config: PublicURL is required (it is embedded in every certificate's CRL and AIA URLs)")
	}
	u, err := url.Parse(c.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return c, fmt.Errorf("ca: config: PublicURL %q must be an absolute http(s) URL without query", c.PublicURL)
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if c.TrustDomain != "" {
		if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
			return c, fmt.Errorf("ca: config: TrustDomain %q: %w", c.TrustDomain, err)
		}
	}
	if c.CRLShards <= 0 {
		c.CRLShards = DefaultCRLShards
	}
	if c.CRLShards > 4096 {
		return c, fmt.Errorf("ca: config: CRLShards %d: at most 4096", c.CRLShards)
	}
	if c.CRLLifetime <= 0 {
		c.CRLLifetime = DefaultCRLLifetime
	}
	if c.OCSPLifetime <= 0 {
		c.OCSPLifetime = DefaultOCSPLifetime
	}
	if c.OCSPSignerTTL <= 0 {
		c.OCSPSignerTTL = DefaultOCSPSignerTTL
	}
	if c.OCSPSignerTTL < 2*c.OCSPLifetime {
		return c, fmt.Errorf("ca: config: OCSPSignerTTL %v must be at least twice OCSPLifetime %v", c.OCSPSignerTTL, c.OCSPLifetime)
	}
	if c.PruneGrace <= 0 {
		c.PruneGrace = DefaultPruneGrace
	}
	if c.PruneBatch <= 0 {
		c.PruneBatch = DefaultPruneBatch
	}
	if c.KeyType == "" {
		c.KeyType = hsm.ECDSAP256
	}
	if !c.KeyType.Valid() {
		return c, fmt.Errorf("ca: config: KeyType %q: %w", c.KeyType, hsm.ErrBadKeyType)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// URL paths under PublicURL. The HTTP front end serves these same paths.
const (
	OCSPPath = "/ocsp"
)

// CRLPath is the path of an issuer's shard CRL (DER).
func CRLPath(issuerID string, shard int) string {
	return fmt.Sprintf("/crl/%s/%d.crl", issuerID, shard)
}

// IssuerCertPath is the path of an issuer's certificate (DER), the AIA
// CA Issuers URL.
func IssuerCertPath(issuerID string) string {
	return "/ca/" + issuerID + ".der"
}

// CRLURL is the absolute URL of a shard CRL.
func (a *Authority) CRLURL(issuerID string, shard int) string {
	return a.cfg.PublicURL + CRLPath(issuerID, shard)
}

// OCSPURL is the absolute URL of the OCSP responder.
func (a *Authority) OCSPURL() string { return a.cfg.PublicURL + OCSPPath }

// IssuerCertURL is the absolute AIA CA Issuers URL of an issuer.
func (a *Authority) IssuerCertURL(issuerID string) string {
	return a.cfg.PublicURL + IssuerCertPath(issuerID)
}
