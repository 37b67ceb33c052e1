// Package config is Sigil's one typed configuration: the server's settings,
// loaded from a YAML file and then overridden by command-line flags, in one
// place (cmd/sigil), and handed down explicitly to every component.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the server's configuration.
type Config struct {
	// Dev starts a self-contained authority with auto-unseal from a key file.
	Dev bool `yaml:"dev"`
	// DataDir holds the embedded database, the lock and (dev) the unseal key.
	DataDir string `yaml:"data_dir"`
	// HTTPSAddr serves health, metrics, CA certificates, CRLs and OCSP.
	HTTPSAddr string `yaml:"https_addr"`
	// GRPCAddr serves the gRPC API.
	GRPCAddr string `yaml:"grpc_addr"`
	// HTTPAddr serves, in plain HTTP, only what relying parties fetch while
	// validating a certificate: CRLs, OCSP and CA certificates. These are
	// signed objects, and RFC 5280/6960 (and every CA/B lint) expect http
	// URLs for them, since fetching them over TLS would need the very
	// revocation check they serve.
	HTTPAddr string `yaml:"http_addr"`
	// PublicURL is the base URL written into certificates (CDP, AIA);
	// default http://HTTPAddr.
	PublicURL string `yaml:"public_url"`
	// Storage is "" or "sqlite" for the embedded database in DataDir, or a
	// postgres:// URL.
	Storage string `yaml:"storage"`
	// StorageSync is the embedded database's durability: "normal" (the
	// default: a commit survives any crash of the process; an OS crash or
	// power loss can lose the commits of the last fraction of a second) or
	// "full" (a commit waits for the disk, so none is lost; ACME and kv
	// writes run slower). PostgreSQL's is its own synchronous_commit.
	StorageSync string `yaml:"storage_sync"`

	HSM    HSM    `yaml:"hsm"`
	TLS    TLS    `yaml:"tls"`
	CA     CA     `yaml:"ca"`
	Log    Log    `yaml:"log"`
	Audit  Audit  `yaml:"audit"`
	ACME   ACME   `yaml:"acme"`
	Lease  Lease  `yaml:"lease"`
	Tokens Tokens `yaml:"tokens"`
	SVID   SVID   `yaml:"svid"`
	// RateLimit bounds minting and issuance per identity and path.
	RateLimit RateLimit `yaml:"rate_limit"`
	// FailedLogins bounds failed logins per source address on every auth
	// method; zero fields take the defaults (burst 10, then one every 6s).
	// It cannot be disabled: an unlimited source could guess passwords.
	FailedLogins RateLimit `yaml:"failed_logins"`
	// PprofAddr, if set, serves net/http/pprof there (loopback only: it
	// exposes internals and is for profiling runs).
	PprofAddr string `yaml:"pprof_addr"`
	// ShutdownTimeout bounds how long in-flight requests may run after
	// SIGTERM/SIGINT.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
}

// HSM configures PKCS#11 key custody.
type HSM struct {
	// URI is an RFC 7512 PKCS#11 URI; empty selects the software keystore.
	URI string `yaml:"uri"`
}

// TLS names an operator-provided certificate for the listeners. Without it
// the listeners use a certificate Sigil's own intermediate issues, which
// needs the server unsealed at start (dev mode or HSM auto-unseal).
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// CA configures the certificate authority.
type CA struct {
	CommonName  string `yaml:"common_name"`
	TrustDomain string `yaml:"trust_domain"`
	// CFSSLProfiles is a path to a cfssl signing configuration (JSON) whose
	// profiles are added to the built-in ones.
	CFSSLProfiles string `yaml:"cfssl_profiles"`
}

// Audit configures the audit log. It is always written to the database;
// File adds a JSON-lines file (mode 0600), hash-chained like the database.
type Audit struct {
	File string `yaml:"file"`
	// Stdout and Syslog add JSON-lines streams (each its own chain from
	// the server's start).
	Stdout bool `yaml:"stdout"`
	Syslog bool `yaml:"syslog"`
	// FailOpen lets requests proceed when the audit log cannot be written
	// (logged loudly). The default, false, fails them, like Vault.
	FailOpen bool `yaml:"fail_open"`
}

// ACME configures the RFC 8555 server on the HTTPS listener.
type ACME struct {
	Disabled bool `yaml:"disabled"`
	// BaseURL is where clients reach it; default https://HTTPS_ADDR/acme.
	BaseURL string `yaml:"base_url"`
	// Where validation connects: production keeps 80/443 and the system
	// resolver; tests and private networks change them.
	HTTP01Port    int `yaml:"http01_port"`
	TLSALPN01Port int `yaml:"tlsalpn01_port"`
	// DNSResolver: empty asks the first nameserver of /etc/resolv.conf
	// directly; HOST:PORT asks that resolver; "system" resolves through
	// the system resolver (/etc/hosts included) for private networks.
	DNSResolver   string   `yaml:"dns_resolver"`
	CAAIdentities []string `yaml:"caa_identities"`
	// Validation limits the addresses validation connects to.
	Validation ACMEValidation `yaml:"validation"`
	// RateLimits are per client IP on the endpoints anyone can call.
	RateLimits ACMERateLimits `yaml:"rate_limits"`
	// Provisioners; empty serves one "default" provisioner issuing with the
	// CA's server profile: outside dev mode it requires EAB and refuses IP
	// identifiers; in dev mode it is open to anyone and any IP.
	Provisioners []ACMEProvisioner `yaml:"provisioners"`
}

// ACMEValidation is the operator's address policy for ACME validation,
// applied on every connection (each http-01 redirect hop too) and to IP
// identifiers at newOrder. Public, RFC 1918, ULA and CGNAT addresses are
// allowed by default; loopback only in dev mode; link-local never; cloud
// metadata addresses, unspecified, multicast and broadcast never, whatever
// is configured. Allow and Deny are CIDRs (or single addresses): the
// longest prefix matching an address decides, Deny winning a tie, so
// "deny: [10.0.0.0/8]" with "allow: [10.1.0.0/16]" permits only 10.1/16
// of 10/8, and "allow: [127.0.0.1/32]" permits that loopback address.
type ACMEValidation struct {
	Allow []string `yaml:"allow"`
	Deny  []string `yaml:"deny"`
}

// ACMERateLimits are token buckets per client IP (an IPv6 /64).
type ACMERateLimits struct {
	NewNonce   ACMERate `yaml:"new_nonce"`   // default 10/s, burst 100
	NewAccount ACMERate `yaml:"new_account"` // default 0.1/s, burst 20
	NewOrder   ACMERate `yaml:"new_order"`   // default 5/s, burst 100
}

// ACMERate is one bucket: 0 per_second takes the default, a negative one
// disables the limit.
type ACMERate struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// ACMEProvisioner is one ACME endpoint family, /acme/NAME/directory.
type ACMEProvisioner struct {
	Name string `yaml:"name"`
	// RequireEAB defaults to true: a configured provisioner is closed
	// unless it says "require_eab: false", which lets anyone who reaches
	// the directory register.
	RequireEAB *bool `yaml:"require_eab"`
	// DNSSuffixes allow only these domains and their subdomains (empty:
	// any name). IPRanges allow IP identifiers in these CIDRs (empty: no
	// IP identifiers).
	DNSSuffixes []string `yaml:"dns_suffixes"`
	IPRanges    []string `yaml:"ip_ranges"`
	// Profiles maps ACME profile names (newOrder "profile") to CA profiles.
	Profiles       map[string]string `yaml:"profiles"`
	DefaultProfile string            `yaml:"default_profile"`
}

// Lease tunes the lease manager; zero values take its defaults.
type Lease struct {
	// MintTimeout bounds an engine's creation of a secret (default 20s). A
	// lease interrupted mid-mint (a crash) expires 2×MintTimeout after it
	// was written, and its credential is then revoked.
	MintTimeout Duration `yaml:"mint_timeout"`
	// MaxAttempts of a failing revocation before the lease is marked
	// irrevocable (default 8); BackoffBase doubles up to BackoffMax between
	// attempts (defaults 2s and 10m).
	MaxAttempts int      `yaml:"max_attempts"`
	BackoffBase Duration `yaml:"backoff_base"`
	BackoffMax  Duration `yaml:"backoff_max"`
	// PollInterval of the expiry worker when idle (default 1s).
	PollInterval Duration `yaml:"poll_interval"`
}

// DefaultTokenMaxTTL is tokens.max_ttl when unset: 32 days, as Vault's
// default max_lease_ttl (768h).
const DefaultTokenMaxTTL = 768 * time.Hour

// Tokens bounds the API tokens (and wrapping tokens) Sigil creates.
// SVID configures the identities node agents obtain for workloads.
type SVID struct {
	// JWTKeyRotation is how long a JWT-SVID signing key signs before its
	// successor takes over (0: 168h).
	JWTKeyRotation Duration `yaml:"jwt_key_rotation"`
	// JWTKeyLead is how long a successor is published before it signs
	// (0: 1h, or half the rotation if that is shorter); it must outlast
	// the agents' bundle sync interval.
	JWTKeyLead Duration `yaml:"jwt_key_lead"`
}

type Tokens struct {
	// MaxTTL is the longest lifetime a created token may have (default
	// 768h); longer requests are refused, and a token created without a
	// TTL gets this one.
	MaxTTL Duration `yaml:"max_ttl"`
}

// RateLimit is a token bucket per identity and path on minting (creds)
// and issuance (sign, enroll). A zero rate disables it.
type RateLimit struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// Log configures structured logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Duration is a time.Duration written as "30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string such as \"30s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// Default returns the built-in defaults.
func Default() Config {
	return Config{
		DataDir:         "./.sigil-dev",
		HTTPSAddr:       "127.0.0.1:8443",
		GRPCAddr:        "127.0.0.1:8444",
		HTTPAddr:        "127.0.0.1:8445",
		CA:              CA{CommonName: "Sigil", TrustDomain: "sigil.test"},
		Log:             Log{Level: "info", Format: "text"},
		ShutdownTimeout: Duration(15 * time.Second),
	}
}

// maxConfigSize bounds the configuration file.
const maxConfigSize = 1 << 20

// LoadFile reads YAML from path on top of base. Unknown keys are errors that
// name the key.
func LoadFile(path string, base Config) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return base, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return base, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return base, fmt.Errorf("config %s: larger than %d bytes", path, maxConfigSize)
	}
	cfg, err := Parse(data, base)
	if err != nil {
		return base, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type (\S+)`)

// Parse decodes YAML on top of base.
func Parse(data []byte, base Config) (Config, error) {
	cfg := base
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return base, nil
		}
		// yaml.v3 reports "field x not found in type config.Config"; say it
		// the way a user reads their file.
		if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
			return base, fmt.Errorf("line %s: unknown key %q", m[1], m[2])
		}
		return base, err
	}
	return cfg, nil
}

// flagOf names the `sigil server` flag that sets a configuration key, so an
// error names both: operators set either.
var flagOf = map[string]string{
	"data_dir": "--data", "https_addr": "--https-addr", "grpc_addr": "--grpc-addr", "http_addr": "--http-addr",
	"public_url": "--public-url", "storage": "--storage", "hsm.uri": "--hsm",
	"tls.cert_file": "--tls-cert", "tls.key_file": "--tls-key",
	"log.level": "--log-level", "log.format": "--log-format",
	"acme.http01_port": "--acme-http01-port", "acme.tlsalpn01_port": "--acme-tlsalpn01-port", "acme.dns_resolver": "--acme-dns-resolver",
	"pprof_addr": "--pprof", "shutdown_timeout": "--shutdown-timeout",
}

// Key names a configuration key for an error: "tls.cert_file (--tls-cert)".
func Key(key string) string {
	if f, ok := flagOf[key]; ok {
		return key + " (" + f + ")"
	}
	return key
}

// Validate checks the configuration and fills derived defaults. Its errors
// name the key and its flag.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return fmt.Errorf("%s must be set", Key("data_dir"))
	}
	for _, name := range []string{"https_addr", "grpc_addr", "http_addr"} {
		addr := map[string]string{"https_addr": c.HTTPSAddr, "grpc_addr": c.GRPCAddr, "http_addr": c.HTTPAddr}[name]
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q: %w", Key(name), addr, err)
		}
	}
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.HTTPAddr
	}
	u, err := url.Parse(c.PublicURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%s %q: must be an absolute http:// URL", Key("public_url"), c.PublicURL)
	}
	if u.Scheme != "http" {
		// Checked here rather than found by the pre-issuance lint, which
		// would refuse every certificate of a server that started fine.
		return fmt.Errorf("%s %q: must be an http:// URL: it is written into every certificate's CRL distribution point and AIA, which relying parties fetch over plain HTTP (RFC 5280, RFC 6960; https there is refused by lint); point it at http_addr, e.g. http://%s",
			Key("public_url"), c.PublicURL, u.Hostname()+":"+portOf(c.HTTPAddr))
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	switch {
	case c.Storage == "", c.Storage == "sqlite":
	case strings.HasPrefix(c.Storage, "postgres://"), strings.HasPrefix(c.Storage, "postgresql://"):
	default:
		return fmt.Errorf("%s %q: use \"sqlite\" or a postgres:// URL", Key("storage"), RedactDSN(c.Storage))
	}
	switch c.StorageSync {
	case "", SyncNormal, SyncFull:
	default:
		return fmt.Errorf("%s %q: use %q or %q", Key("storage_sync"), c.StorageSync, SyncNormal, SyncFull)
	}
	if c.StorageSync != "" && c.StorageBackend() != "sqlite" {
		return fmt.Errorf("%s applies to the embedded database only; on PostgreSQL durability is the server's synchronous_commit", Key("storage_sync"))
	}
	if c.HSM.URI != "" && !strings.HasPrefix(c.HSM.URI, "pkcs11:") {
		return fmt.Errorf("%s: must be an RFC 7512 pkcs11: URI", Key("hsm.uri"))
	}
	if c.PprofAddr != "" {
		host, _, err := net.SplitHostPort(c.PprofAddr)
		if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			return fmt.Errorf("%s %q: must be a loopback address", Key("pprof_addr"), c.PprofAddr)
		}
	}
	for _, name := range []string{"acme.http01_port", "acme.tlsalpn01_port"} {
		p := map[string]int{"acme.http01_port": c.ACME.HTTP01Port, "acme.tlsalpn01_port": c.ACME.TLSALPN01Port}[name]
		if p < 0 || p > 65535 {
			return fmt.Errorf("%s %d: not a port", Key(name), p)
		}
	}
	if c.ACME.DNSResolver != "" && c.ACME.DNSResolver != "system" {
		if _, _, err := net.SplitHostPort(c.ACME.DNSResolver); err != nil {
			return fmt.Errorf("%s %q: want HOST:PORT or \"system\"", Key("acme.dns_resolver"), c.ACME.DNSResolver)
		}
	}
	if err := c.ACME.validate(); err != nil {
		return err
	}
	if c.RateLimit.PerSecond < 0 || c.RateLimit.Burst < 0 {
		return errors.New("rate_limit: per_second and burst must not be negative")
	}
	if c.FailedLogins.PerSecond < 0 || c.FailedLogins.Burst < 0 {
		return errors.New("failed_logins: per_second and burst must not be negative")
	}
	if c.Lease.MaxAttempts < 0 || c.Lease.MintTimeout < 0 || c.Lease.BackoffBase < 0 || c.Lease.BackoffMax < 0 || c.Lease.PollInterval < 0 {
		return errors.New("lease: durations and max_attempts must not be negative")
	}
	switch {
	case c.Tokens.MaxTTL < 0:
		return errors.New("tokens.max_ttl must not be negative")
	case c.Tokens.MaxTTL == 0:
		c.Tokens.MaxTTL = Duration(DefaultTokenMaxTTL)
	case c.Tokens.MaxTTL < Duration(time.Second):
		return fmt.Errorf("tokens.max_ttl %v: must be at least 1s", time.Duration(c.Tokens.MaxTTL))
	}
	if r, l := time.Duration(c.SVID.JWTKeyRotation), time.Duration(c.SVID.JWTKeyLead); r < 0 || l < 0 {
		return errors.New("svid.jwt_key_rotation and svid.jwt_key_lead must not be negative")
	} else if r != 0 && r < time.Hour {
		return fmt.Errorf("svid.jwt_key_rotation %v: must be at least 1h", r)
	} else if l != 0 && (l < time.Minute || (r != 0 && 2*l > r)) {
		return fmt.Errorf("svid.jwt_key_lead %v: must be at least 1m and at most half of svid.jwt_key_rotation", l)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return fmt.Errorf("%s and %s must be set together", Key("tls.cert_file"), Key("tls.key_file"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%s %q: use debug, info, warn or error", Key("log.level"), c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("%s %q: use text or json", Key("log.format"), c.Log.Format)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("%s must be positive", Key("shutdown_timeout"))
	}
	return nil
}

// portOf is addr's port, or "80" when it has none.
func portOf(addr string) string {
	if _, p, err := net.SplitHostPort(addr); err == nil && p != "0" {
		return p
	}
	return "80"
}

// Values of StorageSync.
const (
	SyncNormal = "normal"
	SyncFull   = "full"
)

// StorageBackend names the configured storage backend.
func (c *Config) StorageBackend() string {
	if c.Storage == "" || c.Storage == "sqlite" {
		return "sqlite"
	}
	return "postgres"
}

// RedactDSN hides the password of a URL-shaped DSN so it can be logged.
func RedactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return dsn
	}
	return u.Redacted()
}

// Open reports whether the provisioner lets anyone register without EAB.
func (p ACMEProvisioner) Open() bool { return p.RequireEAB != nil && !*p.RequireEAB }

func (a *ACME) validate() error {
	for key, list := range map[string][]string{"acme.validation.allow": a.Validation.Allow, "acme.validation.deny": a.Validation.Deny} {
		for _, c := range list {
			if !validCIDROrIP(c) {
				return fmt.Errorf("%s: %q is not a CIDR or an IP address", key, c)
			}
		}
	}
	for name, r := range map[string]ACMERate{"new_nonce": a.RateLimits.NewNonce, "new_account": a.RateLimits.NewAccount, "new_order": a.RateLimits.NewOrder} {
		if r.Burst < 0 {
			return fmt.Errorf("acme.rate_limits.%s.burst must not be negative", name)
		}
	}
	seen := map[string]bool{}
	for i, p := range a.Provisioners {
		if p.Name == "" {
			return fmt.Errorf("acme.provisioners[%d]: name must be set", i)
		}
		if seen[p.Name] {
			return fmt.Errorf("acme.provisioners: duplicate name %q", p.Name)
		}
		seen[p.Name] = true
		for _, c := range p.IPRanges {
			if _, err := netip.ParsePrefix(c); err != nil {
				return fmt.Errorf("acme.provisioners[%s].ip_ranges: %q is not a CIDR", p.Name, c)
			}
		}
	}
	return nil
}

func validCIDROrIP(s string) bool {
	if _, err := netip.ParsePrefix(s); err == nil {
		return true
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}
