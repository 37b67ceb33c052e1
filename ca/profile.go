package ca

import (
	"crypto/x509"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"
	"time"

	cfsslconfig "github.com/cloudflare/cfssl/config"
)

// Built-in profile names.
const (
	ProfileServer       = "server"
	ProfileClient       = "client"
	ProfileWorkload     = "workload"
	ProfileIntermediate = "intermediate"
	// profileOCSPSigner is internal: delegated OCSP responder certificates.
	profileOCSPSigner = "ocsp-signer"
)

// ProfileConfig is a named signing profile.
//
// Name patterns are globs where '*' matches any run of characters
// (including dots and slashes); "*" alone allows any well-formed name of
// that kind. An empty list forbids that kind of name. DNS and email
// patterns match case-insensitively.
type ProfileConfig struct {
	Description string
	// KeyUsage and ExtKeyUsage use cfssl's usage names ("digital signature",
	// "key encipherment", "cert sign", "crl sign", "server auth",
	// "client auth", "ocsp signing", ...).
	KeyUsage      []string
	ExtKeyUsage   []string
	DefaultTTL    time.Duration
	MaxTTL        time.Duration
	DNSPatterns   []string
	IPRanges      []string // CIDRs; "0.0.0.0/0" and "::/0" allow any
	URIPatterns   []string
	EmailPatterns []string
	// CommonNamePatterns allow a subject common name that is not also one of
	// the requested SANs (for example a user name on a client certificate).
	// A common name that is a SAN needs no pattern.
	CommonNamePatterns []string
	// AllowWildcard allows a "*." leftmost label in DNS names.
	AllowWildcard bool
	// AllowSingleLabel allows DNS names of one label, such as "localhost"
	// or a bare host name on a private network (Vault's allow_localhost).
	AllowSingleLabel bool
	// NameRegexp, if set, must match every requested name (cfssl's
	// name_whitelist).
	NameRegexp string
	// KeyAlgorithms allowed for the subject key: "rsa", "ecdsa", "ed25519"
	// (default rsa and ecdsa).
	KeyAlgorithms []string
	MinRSABits    int      // default 2048; never below 2048
	ECDSACurves   []string // default "P-256", "P-384"
	IsCA          bool
	// MaxPathLen for a CA profile; -1 means unlimited.
	MaxPathLen int
	// SPIFFE makes the profile issue X.509-SVIDs: exactly one URI SAN, a
	// SPIFFE ID in the configured trust domain.
	SPIFFE bool
	// OmitCommonName carries every name in the SANs (a common name that is
	// a DNS name or IP is copied there) and keeps the requested common name
	// only when it is one of those DNS SANs; otherwise the subject is
	// empty. The CA/B BRs deprecate the CN and verifiers ignore it.
	OmitCommonName bool
	// CopySubject keeps the CSR's whole subject (CA profiles); otherwise only
	// the common name is kept.
	CopySubject bool
}

// BuiltinProfiles returns the built-in profiles for a trust domain (which
// may be empty: the workload profile then allows no SPIFFE ID).
func BuiltinProfiles(trustDomain string) map[string]ProfileConfig {
	var spiffeURIs []string
	if trustDomain != "" {
		spiffeURIs = []string{"spiffe://" + trustDomain + "/*"}
	}
	return map[string]ProfileConfig{
		ProfileServer: {
			Description: "TLS server (and client) certificates for DNS names and IP addresses",
			KeyUsage:    []string{"digital signature", "key encipherment"},
			ExtKeyUsage: []string{"server auth", "client auth"},
			DefaultTTL:  30 * 24 * time.Hour,
			// The BR validity limit (zlint keeps it on) falls to 100 days
			// in March 2027; 90 days stays within it.
			MaxTTL:        90 * 24 * time.Hour,
			DNSPatterns:   []string{"*"},
			IPRanges:      []string{"0.0.0.0/0", "::/0"},
			AllowWildcard: true,
			// Private networks name hosts "localhost" or "db"; the
			// listeners' own certificate needs "localhost".
			AllowSingleLabel: true,
			OmitCommonName:   true,
		},
		ProfileClient: {
			Description:        "TLS client certificates for people and services",
			KeyUsage:           []string{"digital signature"},
			ExtKeyUsage:        []string{"client auth"},
			DefaultTTL:         30 * 24 * time.Hour,
			MaxTTL:             397 * 24 * time.Hour,
			DNSPatterns:        []string{"*"},
			EmailPatterns:      []string{"*"},
			URIPatterns:        []string{"*"},
			CommonNamePatterns: []string{"*"},
		},
		ProfileWorkload: {
			Description: "SPIFFE X.509-SVIDs",
			KeyUsage:    []string{"digital signature"},
			ExtKeyUsage: []string{"server auth", "client auth"},
			DefaultTTL:  time.Hour,
			MaxTTL:      24 * time.Hour,
			URIPatterns: spiffeURIs,
			SPIFFE:      true,
		},
		ProfileIntermediate: {
			Description: "subordinate CAs (signed by the root, cannot sign further CAs)",
			KeyUsage:    []string{"digital signature", "cert sign", "crl sign"},
			// TLS-capable subordinate CAs are expected to carry the EKUs
			// they may issue (CA/B BR 7.1.2.2; zlint warns otherwise).
			ExtKeyUsage:        []string{"server auth", "client auth"},
			DefaultTTL:         5 * 365 * 24 * time.Hour,
			MaxTTL:             10 * 365 * 24 * time.Hour,
			CommonNamePatterns: []string{"*"},
			IsCA:               true,
			MaxPathLen:         0,
			CopySubject:        true,
		},
	}
}

// profile is a validated, compiled ProfileConfig.
type profile struct {
	name         string
	cfg          ProfileConfig
	keyUsage     x509.KeyUsage
	extKeyUsage  []x509.ExtKeyUsage
	ipNets       []*net.IPNet
	nameRE       *regexp.Regexp
	keyAlgs      map[string]bool
	curves       map[string]bool
	minRSA       int
	defaultTTL   time.Duration
	maxTTL       time.Duration
	signedByRoot bool
}

func compileProfile(name string, c ProfileConfig) (*profile, error) {
	p := &profile{name: name, cfg: c}
	for _, u := range c.KeyUsage {
		ku, ok := cfsslconfig.KeyUsage[strings.ToLower(u)]
		if !ok {
			return nil, fmt.Errorf("profile %q: unknown key usage %q", name, u)
		}
		p.keyUsage |= ku
	}
	for _, u := range c.ExtKeyUsage {
		eku, ok := cfsslconfig.ExtKeyUsage[strings.ToLower(u)]
		if !ok {
			return nil, fmt.Errorf("profile %q: unknown extended key usage %q", name, u)
		}
		p.extKeyUsage = append(p.extKeyUsage, eku)
	}
	if p.keyUsage == 0 {
		return nil, fmt.Errorf("profile %q: no key usage", name)
	}
	if c.IsCA && p.keyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("profile %q: a CA profile needs the \"cert sign\" key usage", name)
	}
	if !c.IsCA && p.keyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		return nil, fmt.Errorf("profile %q: cert sign / crl sign need IsCA", name)
	}
	for _, r := range c.IPRanges {
		_, n, err := net.ParseCIDR(r)
		if err != nil {
			return nil, fmt.Errorf("profile %q: IP range %q: %w", name, r, err)
		}
		p.ipNets = append(p.ipNets, n)
	}
	if c.NameRegexp != "" {
		re, err := regexp.Compile(c.NameRegexp)
		if err != nil {
			return nil, fmt.Errorf("profile %q: name regexp: %w", name, err)
		}
		p.nameRE = re
	}
	algs := c.KeyAlgorithms
	if len(algs) == 0 {
		algs = []string{"rsa", "ecdsa"}
	}
	p.keyAlgs = map[string]bool{}
	for _, a := range algs {
		a = strings.ToLower(a)
		switch a {
		case "rsa", "ecdsa", "ed25519":
			p.keyAlgs[a] = true
		default:
			return nil, fmt.Errorf("profile %q: unknown key algorithm %q (rsa, ecdsa, ed25519)", name, a)
		}
	}
	curves := c.ECDSACurves
	if len(curves) == 0 {
		curves = []string{"P-256", "P-384"}
	}
	p.curves = map[string]bool{}
	for _, cv := range curves {
		switch cv {
		case "P-256", "P-384", "P-521":
			p.curves[cv] = true
		default:
			return nil, fmt.Errorf("profile %q: curve %q not allowed (P-256, P-384, P-521)", name, cv)
		}
	}
	p.minRSA = max(c.MinRSABits, 2048)
	p.defaultTTL, p.maxTTL = c.DefaultTTL, c.MaxTTL
	if p.maxTTL <= 0 {
		p.maxTTL = 397 * 24 * time.Hour
	}
	if p.defaultTTL <= 0 || p.defaultTTL > p.maxTTL {
		p.defaultTTL = min(p.maxTTL, 90*24*time.Hour)
	}
	if c.SPIFFE && c.IsCA {
		return nil, fmt.Errorf("profile %q: an SVID profile cannot be a CA", name)
	}
	// Sub-CAs are signed by the root: the intermediate has pathlen 0.
	p.signedByRoot = c.IsCA
	return p, nil
}

func compileProfiles(trustDomain string, overrides map[string]ProfileConfig) (map[string]*profile, error) {
	all := BuiltinProfiles(trustDomain)
	for name, c := range overrides {
		if name == "" || name == profileOCSPSigner {
			return nil, fmt.Errorf("profile name %q is reserved", name)
		}
		all[name] = c
	}
	all[profileOCSPSigner] = ProfileConfig{
		KeyUsage:    []string{"digital signature"},
		ExtKeyUsage: []string{"ocsp signing"},
		MaxTTL:      10 * 365 * 24 * time.Hour,
	}
	out := make(map[string]*profile, len(all))
	for name, c := range all {
		p, err := compileProfile(name, c)
		if err != nil {
			return nil, err
		}
		out[name] = p
	}
	return out, nil
}

// ProfileNames lists the profiles callers may use, sorted.
func (a *Authority) ProfileNames() []string {
	var names []string
	for n := range a.profiles {
		if n != profileOCSPSigner {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Profile returns a profile's configuration.
func (a *Authority) Profile(name string) (ProfileConfig, bool) {
	p, ok := a.profiles[name]
	if !ok || name == profileOCSPSigner {
		return ProfileConfig{}, false
	}
	return p.cfg, true
}

// ProfilesFromCFSSL converts a cfssl configuration's signing section
// (signing.default and signing.profiles) to profiles. The default profile
// is returned under the name "default". cfssl has no name patterns, so a
// profile allows any name of any kind unless name_whitelist restricts it;
// cfssl's CA constraint, usages and expiry map directly. Settings Sigil
// does not support (remote signers, auth keys, CT logs, copied extensions,
// policies) are rejected rather than silently ignored.
func ProfilesFromCFSSL(jsonBytes []byte) (map[string]ProfileConfig, error) {
	cfg, err := cfsslconfig.LoadConfig(jsonBytes)
	if err != nil {
		return nil, fmt.Errorf("ca: cfssl config: %w", err)
	}
	if cfg.Signing == nil {
		return nil, fmt.Errorf("ca: cfssl config: no signing section")
	}
	out := map[string]ProfileConfig{}
	conv := func(name string, sp *cfsslconfig.SigningProfile) error {
		if sp == nil {
			return nil
		}
		switch {
		case sp.RemoteName != "" || sp.AuthKeyName != "":
			return fmt.Errorf("ca: cfssl profile %q: remote signing and auth keys are not supported", name)
		case len(sp.CTLogServers) > 0:
			return fmt.Errorf("ca: cfssl profile %q: CT log submission is not supported", name)
		case sp.CopyExtensions || len(sp.AllowedExtensions) > 0:
			return fmt.Errorf("ca: cfssl profile %q: copying CSR extensions is not supported", name)
		case len(sp.Policies) > 0:
			return fmt.Errorf("ca: cfssl profile %q: certificate policies are not supported", name)
		}
		pc := ProfileConfig{
			Description:        "imported from cfssl",
			DNSPatterns:        []string{"*"},
			IPRanges:           []string{"0.0.0.0/0", "::/0"},
			URIPatterns:        []string{"*"},
			EmailPatterns:      []string{"*"},
			CommonNamePatterns: []string{"*"},
			NameRegexp:         sp.NameWhitelistString,
			DefaultTTL:         sp.Expiry,
			MaxTTL:             sp.Expiry,
			IsCA:               sp.CAConstraint.IsCA,
			CopySubject:        sp.CAConstraint.IsCA,
			MaxPathLen:         -1,
		}
		if sp.CAConstraint.IsCA && (sp.CAConstraint.MaxPathLen > 0 || sp.CAConstraint.MaxPathLenZero) {
			pc.MaxPathLen = sp.CAConstraint.MaxPathLen
		}
		for _, u := range sp.Usage {
			u = strings.ToLower(u)
			if _, ok := cfsslconfig.KeyUsage[u]; ok {
				pc.KeyUsage = append(pc.KeyUsage, u)
			} else if _, ok := cfsslconfig.ExtKeyUsage[u]; ok {
				pc.ExtKeyUsage = append(pc.ExtKeyUsage, u)
			} else {
				return fmt.Errorf("ca: cfssl profile %q: unknown usage %q", name, u)
			}
		}
		if _, err := compileProfile(name, pc); err != nil {
			return fmt.Errorf("ca: cfssl %w", err)
		}
		out[name] = pc
		return nil
	}
	if err := conv("default", cfg.Signing.Default); err != nil {
		return nil, err
	}
	for name, sp := range cfg.Signing.Profiles {
		if err := conv(name, sp); err != nil {
			return nil, err
		}
	}
	return out, nil
}
