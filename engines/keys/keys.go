// Package keys is the "keys" engine: it mints key pairs and symmetric keys
// for workloads, each tracked by a lease, and signs SSH certificates with a
// CA key held in custody.
//
// A minted private or symmetric key exists only in the response, sealed to
// the recipient; Sigil keeps nothing of it. With issue_certificate a
// certificate for the public key is issued by the CA and bound to the
// lease: its serial is chosen before the lease is written, so revoking the
// lease (even one left by a crash before issuance finished) revokes it.
package keys

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/storage"
)

// Type is the engine type name.
const Type = "keys"

// Key types a role may mint.
const (
	ECDSAP256  = "ecdsa-p256"
	ECDSAP384  = "ecdsa-p384"
	Ed25519    = "ed25519"
	RSA3072    = "rsa-3072"
	X25519     = "x25519"
	AES256     = "aes-256"
	HMACSHA256 = "hmac-sha256"
)

// KeyTypes lists the mintable key types.
var KeyTypes = []string{ECDSAP256, ECDSAP384, Ed25519, RSA3072, X25519, AES256, HMACSHA256}

// Role kinds.
const (
	KindKey     = "key"
	KindSSHUser = "ssh_user"
	KindSSHHost = "ssh_host"
)

// Role and configuration keys.
const (
	KeyKind             = "type"
	KeyKeyType          = "key_type"
	KeyTTL              = "ttl"
	KeyMaxTTL           = "max_ttl"
	KeyIssueCertificate = "issue_certificate"
	KeyProfile          = "profile"
	KeyCommonName       = "common_name"
	KeyURISANs          = "uri_sans"
	KeyDNSSANs          = "dns_sans"

	KeyAllowedPrincipals = "allowed_principals"
	KeyDefaultPrincipals = "default_principals"
	KeyPrincipalMap      = "principal_map"
	KeyCriticalOptions   = "critical_options"
	KeyExtensions        = "extensions"

	KeySSHCAKeyType = "ssh_ca_key_type"
)

// Defaults.
const (
	DefaultTTL    = time.Hour
	DefaultMaxTTL = 24 * time.Hour
	// MaxPublicKey bounds an SSH public key to sign.
	MaxPublicKey = 16 << 10
)

// DefaultUserExtensions are OpenSSH's usual permissions for a user
// certificate (what ssh-keygen grants by default).
var DefaultUserExtensions = []string{"permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-pty", "permit-user-rc"}

// ErrPrincipalNotAllowed: an SSH certificate was asked for a principal the
// role does not allow.
var ErrPrincipalNotAllowed = errors.New("keys: principal not allowed by the role")

// The keys engine mints leased keys and signs SSH certificates.
var (
	_ engines.Leased    = (*Engine)(nil)
	_ engines.SSHSigner = (*Engine)(nil)
)

// Register adds the engine type to reg.
func Register(reg *engines.Registry) error {
	return reg.Register(Type, func(env engines.Env) (engines.Engine, error) { return New(env) })
}

// Engine is one mounted keys engine.
type Engine struct {
	env engines.Env
	log *slog.Logger

	mu        sync.Mutex
	caKeyType hsm.KeyType
	sshCA     ssh.Signer // loaded on first use
}

// New builds an engine for env.
func New(env engines.Env) (*Engine, error) {
	if env.Store == nil {
		return nil, fmt.Errorf("%w: keys engine needs a store", engines.ErrNotConfigured)
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{env: env, log: log, caKeyType: hsm.Ed25519}, nil
}

// Configure implements engines.Engine: ssh_ca_key_type (ed25519 or
// ecdsa-p256) applies when the SSH CA key is first created.
func (e *Engine) Configure(_ context.Context, cfg map[string]string) (map[string]string, error) {
	kt := hsm.Ed25519
	for k, v := range cfg {
		switch k {
		case KeySSHCAKeyType:
			if v != string(hsm.Ed25519) && v != string(hsm.ECDSAP256) {
				return nil, fmt.Errorf("%w: %s %q: use ed25519 or ecdsa-p256", engines.ErrInvalidConfig, k, v)
			}
			kt = hsm.KeyType(v)
		default:
			return nil, fmt.Errorf("%w: unknown configuration key %q", engines.ErrInvalidConfig, k)
		}
	}
	e.mu.Lock()
	e.caKeyType = kt
	e.mu.Unlock()
	return map[string]string{KeySSHCAKeyType: string(kt)}, nil
}

// role is a parsed role.
type role struct {
	kind      string
	keyType   string
	ttl       time.Duration
	maxTTL    time.Duration
	issueCert bool
	profile   string
	cn        string
	uris      []string
	dns       []string

	allowed    []string
	defaults   []string
	mapping    []principalRule
	critical   map[string]string
	extensions []string
}

func list(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

var certPlaceholders = []string{"{{identity}}", "{{role}}", "{{lease_id}}"}

func checkPlaceholders(field, v string, allowed []string) error {
	rest := v
	for _, p := range allowed {
		rest = strings.ReplaceAll(rest, p, "")
	}
	if strings.Contains(rest, "{{") {
		return fmt.Errorf("%w: %s: unknown placeholder (use %s)", engines.ErrInvalidConfig, field, strings.Join(allowed, ", "))
	}
	return nil
}

func parseRole(f map[string]string) (*role, error) {
	r := &role{kind: KindKey, keyType: ECDSAP256, ttl: DefaultTTL, maxTTL: DefaultMaxTTL}
	if k, ok := f[KeyKind]; ok {
		if k != KindKey && k != KindSSHUser && k != KindSSHHost {
			return nil, fmt.Errorf("%w: %s %q: use key, ssh_user or ssh_host", engines.ErrInvalidConfig, KeyKind, k)
		}
		r.kind = k
	}
	ssh := r.kind != KindKey
	for k, v := range f {
		switch k {
		case KeyKind:
		case KeyTTL, KeyMaxTTL:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%w: %s must be a positive duration", engines.ErrInvalidConfig, k)
			}
			if k == KeyTTL {
				r.ttl = d
			} else {
				r.maxTTL = d
			}
		case KeyKeyType:
			if ssh || !slices.Contains(KeyTypes, v) {
				return nil, fmt.Errorf("%w: %s %q: use one of %s (key roles only)", engines.ErrInvalidConfig, k, v, strings.Join(KeyTypes, ", "))
			}
			r.keyType = v
		case KeyIssueCertificate:
			b, err := strconv.ParseBool(v)
			if err != nil || ssh {
				return nil, fmt.Errorf("%w: %s must be true or false (key roles only)", engines.ErrInvalidConfig, k)
			}
			r.issueCert = b
		case KeyProfile:
			r.profile = v
		case KeyCommonName, KeyURISANs, KeyDNSSANs:
			if err := checkPlaceholders(k, v, certPlaceholders); err != nil {
				return nil, err
			}
			switch k {
			case KeyCommonName:
				r.cn = v
			case KeyURISANs:
				r.uris = list(v)
			default:
				r.dns = list(v)
			}
		case KeyAllowedPrincipals, KeyDefaultPrincipals:
			if !ssh {
				return nil, fmt.Errorf("%w: %s is for ssh_user and ssh_host roles", engines.ErrInvalidConfig, k)
			}
			if err := checkPlaceholders(k, v, []string{"{{identity}}"}); err != nil {
				return nil, err
			}
			if k == KeyAllowedPrincipals {
				r.allowed = list(v)
			} else {
				r.defaults = list(v)
			}
		case KeyPrincipalMap:
			if !ssh {
				return nil, fmt.Errorf("%w: %s is for ssh_user and ssh_host roles", engines.ErrInvalidConfig, k)
			}
			m, err := parsePrincipalMap(v)
			if err != nil {
				return nil, err
			}
			r.mapping = m
		case KeyCriticalOptions:
			if v == "" {
				continue
			}
			if err := json.Unmarshal([]byte(v), &r.critical); err != nil || !ssh {
				return nil, fmt.Errorf("%w: %s must be a JSON object of strings (ssh roles only)", engines.ErrInvalidConfig, k)
			}
			for name := range r.critical {
				if name != "force-command" && name != "source-address" && name != "verify-required" {
					return nil, fmt.Errorf("%w: critical option %q: OpenSSH knows force-command, source-address, verify-required", engines.ErrInvalidConfig, name)
				}
			}
		case KeyExtensions:
			if !ssh {
				return nil, fmt.Errorf("%w: %s is for ssh roles", engines.ErrInvalidConfig, k)
			}
			r.extensions = list(v)
		default:
			return nil, fmt.Errorf("%w: unknown role key %q", engines.ErrInvalidConfig, k)
		}
	}
	if r.ttl > r.maxTTL {
		return nil, fmt.Errorf("%w: ttl exceeds max_ttl", engines.ErrInvalidConfig)
	}
	if r.issueCert {
		switch r.keyType {
		case ECDSAP256, ECDSAP384, Ed25519, RSA3072:
		default:
			return nil, fmt.Errorf("%w: issue_certificate needs a signing key type (ecdsa-p256, ecdsa-p384, ed25519, rsa-3072), not %s", engines.ErrInvalidConfig, r.keyType)
		}
	} else if r.profile != "" || r.cn != "" || len(r.uris) > 0 || len(r.dns) > 0 {
		return nil, fmt.Errorf("%w: profile and certificate names need issue_certificate=true", engines.ErrInvalidConfig)
	}
	if ssh {
		if len(r.allowed) == 0 && len(r.mapping) == 0 {
			return nil, fmt.Errorf("%w: ssh roles need allowed_principals or principal_map (deny by default)", engines.ErrInvalidConfig)
		}
		if r.extensions == nil && r.kind == KindSSHUser {
			r.extensions = DefaultUserExtensions
		}
	}
	return r, nil
}

// ValidateRole implements engines.Leased.
func (e *Engine) ValidateRole(_ context.Context, _ string, f map[string]string) (map[string]string, error) {
	r, err := parseRole(f)
	if err != nil {
		return nil, err
	}
	out := map[string]string{KeyKind: r.kind, KeyTTL: r.ttl.String(), KeyMaxTTL: r.maxTTL.String()}
	if r.kind == KindKey {
		out[KeyKeyType] = r.keyType
		out[KeyIssueCertificate] = strconv.FormatBool(r.issueCert)
		for k, v := range map[string]string{KeyProfile: r.profile, KeyCommonName: r.cn,
			KeyURISANs: strings.Join(r.uris, ","), KeyDNSSANs: strings.Join(r.dns, ",")} {
			if v != "" {
				out[k] = v
			}
		}
		return out, nil
	}
	if len(r.allowed) > 0 {
		out[KeyAllowedPrincipals] = strings.Join(r.allowed, ",")
	}
	if len(r.defaults) > 0 {
		out[KeyDefaultPrincipals] = strings.Join(r.defaults, ",")
	}
	if len(r.mapping) > 0 {
		out[KeyPrincipalMap] = formatPrincipalMap(r.mapping)
	}
	if len(r.critical) > 0 {
		b, _ := json.Marshal(r.critical)
		out[KeyCriticalOptions] = string(b)
	}
	out[KeyExtensions] = strings.Join(r.extensions, ",")
	return out, nil
}

// revocation is what a lease records: the certificate serial, if any.
type revocation struct {
	Serial string `json:"serial,omitempty"`
}

// private is the in-memory half of a prepared key.
type private struct {
	data, public map[string]string
	csr          []byte
	profile      string
	ttl          time.Duration
	serial       string
	leaseID      string
}

// Prepare implements engines.Leased: the key is generated here (no side
// effects); only the certificate, if any, is made by Create.
func (e *Engine) Prepare(_ context.Context, r engines.Role, req engines.MintRequest) (*engines.Pending, error) {
	ro, err := parseRole(r.Fields)
	if err != nil {
		return nil, err
	}
	if ro.kind != KindKey {
		return nil, fmt.Errorf("%w: %s is an SSH role: sign a public key with `sigil ssh sign`", engines.ErrNotSupported, r.Name)
	}
	ttl := ro.ttl
	if req.TTL > 0 {
		ttl = req.TTL
	}
	ttl = min(ttl, ro.maxTTL)
	data, public, signer, err := generate(ro.keyType)
	if err != nil {
		return nil, err
	}
	p := &private{data: data, public: public, ttl: ttl, profile: ro.profile, leaseID: req.LeaseID}
	var rev revocation
	renewable := true
	if ro.issueCert {
		if e.env.Certificates == nil {
			return nil, fmt.Errorf("%w: issue_certificate needs the CA", engines.ErrNotConfigured)
		}
		subst := strings.NewReplacer("{{identity}}", req.Identity, "{{role}}", r.Name, "{{lease_id}}", req.LeaseID)
		tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: subst.Replace(ro.cn)}}
		for _, u := range ro.uris {
			pu, err := url.Parse(subst.Replace(u))
			if err != nil {
				return nil, fmt.Errorf("%w: uri_sans %q: %v", engines.ErrInvalidRequest, u, err)
			}
			tmpl.URIs = append(tmpl.URIs, pu)
		}
		for _, d := range ro.dns {
			tmpl.DNSNames = append(tmpl.DNSNames, subst.Replace(d))
		}
		if p.csr, err = x509.CreateCertificateRequest(rand.Reader, tmpl, signer); err != nil {
			return nil, fmt.Errorf("keys: CSR: %w", err)
		}
		p.serial = e.env.Certificates.NewSerial()
		rev.Serial = p.serial
		// A certificate's validity cannot move with a renewed lease.
		renewable = false
	}
	b, err := json.Marshal(rev)
	if err != nil {
		return nil, err
	}
	return &engines.Pending{Revocation: b, ExpiresAt: req.Now.Add(ttl), MaxExpiresAt: req.Now.Add(ro.maxTTL),
		Renewable: renewable, Private: p}, nil
}

// generate makes a key of typ: the secret data (PKCS#8 PEM or base64), the
// public data, and a signer for CSRs (nil for non-signing types).
func generate(typ string) (data, public map[string]string, signer crypto.Signer, err error) {
	data = map[string]string{"key_type": typ}
	public = map[string]string{"key_type": typ}
	var priv any
	switch typ {
	case ECDSAP256, ECDSAP384:
		c := elliptic.P256()
		if typ == ECDSAP384 {
			c = elliptic.P384()
		}
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			return nil, nil, nil, err
		}
		priv, signer = k, k
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, nil, err
		}
		priv, signer = k, k
	case RSA3072:
		k, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			return nil, nil, nil, err
		}
		priv, signer = k, k
	case X25519:
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, nil, err
		}
		priv = k
		public["public_key_raw"] = base64.StdEncoding.EncodeToString(k.PublicKey().Bytes())
	case AES256, HMACSHA256:
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		data["key"] = base64.StdEncoding.EncodeToString(b)
		clear(b)
		return data, public, nil, nil
	default:
		return nil, nil, nil, fmt.Errorf("%w: key type %q", engines.ErrInvalidConfig, typ)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, nil, err
	}
	data["private_key"] = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	clear(der)
	var pub any
	switch k := priv.(type) {
	case crypto.Signer:
		pub = k.Public()
	case *ecdh.PrivateKey:
		pub = k.PublicKey()
	}
	pder, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, nil, err
	}
	public["public_key"] = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}))
	data["public_key"] = public["public_key"]
	return data, public, signer, nil
}

// Create implements engines.Leased: it issues the certificate, if any.
func (e *Engine) Create(ctx context.Context, pe *engines.Pending) (*engines.Secret, error) {
	p, ok := pe.Private.(*private)
	if !ok {
		return nil, fmt.Errorf("%w: not a prepared key", engines.ErrInvalidRequest)
	}
	if p.csr != nil {
		iss, err := e.env.Certificates.Issue(ctx, engines.CertRequest{CSR: p.csr, Profile: p.profile, TTL: p.ttl,
			Serial: p.serial, LeaseID: p.leaseID})
		if err != nil {
			return nil, fmt.Errorf("keys: issue certificate: %w", err)
		}
		p.public["certificate"] = string(iss.ChainPEM)
		p.public["serial"] = iss.Serial
		p.data["certificate"] = string(iss.ChainPEM)
		p.data["serial"] = iss.Serial
	}
	return &engines.Secret{Data: p.data, Public: p.public}, nil
}

// Renew implements engines.Leased: a key has nothing to move.
func (e *Engine) Renew(context.Context, []byte, time.Time) error { return nil }

// Revoke implements engines.Leased: the key itself was never kept; a bound
// certificate is revoked (idempotently).
func (e *Engine) Revoke(ctx context.Context, b []byte) error {
	var rev revocation
	if err := json.Unmarshal(b, &rev); err != nil {
		return fmt.Errorf("keys: revocation data: %w", err)
	}
	if rev.Serial == "" {
		return nil
	}
	if e.env.Certificates == nil {
		return fmt.Errorf("%w: revoking certificate %s needs the CA", engines.ErrNotConfigured, rev.Serial)
	}
	return e.env.Certificates.Revoke(ctx, rev.Serial)
}

// Close implements engines.Engine.
func (e *Engine) Close() error { return nil }

// ---- SSH certificates

const sshCAName = "ssh-ca"

// sshSigner returns the mount's SSH CA signer, creating its key in custody
// on first use (the key name is random, kept in the mount's store, so a
// re-enabled mount never picks up its predecessor's key).
func (e *Engine) sshSigner(ctx context.Context) (ssh.Signer, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sshCA != nil {
		return e.sshCA, nil
	}
	if e.env.Custody == nil {
		return nil, fmt.Errorf("%w: SSH certificates need key custody", engines.ErrNotConfigured)
	}
	name, err := e.env.Store.Get(ctx, sshCAName)
	if errors.Is(err, storage.ErrNotFound) {
		var rnd [6]byte
		_, _ = rand.Read(rnd[:])
		fresh := "ssh-ca-" + base64.RawURLEncoding.EncodeToString(rnd[:])
		if _, err = e.env.Custody.CreateKey(ctx, fresh, e.caKeyType); err != nil {
			return nil, fmt.Errorf("keys: create SSH CA key: %w", err)
		}
		err = e.env.Store.Create(ctx, sshCAName, []byte(fresh))
		if errors.Is(err, storage.ErrConflict) {
			name, err = e.env.Store.Get(ctx, sshCAName) // another node won
		} else {
			name = []byte(fresh)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("keys: SSH CA key: %w", err)
	}
	cs, err := e.env.Custody.Signer(ctx, string(name))
	if err != nil {
		return nil, fmt.Errorf("keys: SSH CA key: %w", err)
	}
	s, err := ssh.NewSignerFromSigner(cs)
	if err != nil {
		return nil, fmt.Errorf("keys: SSH CA key: %w", err)
	}
	e.sshCA = s
	return s, nil
}

// SSHCAPublicKey returns the CA key in authorized_keys form, for
// TrustedUserCAKeys or @cert-authority lines.
func (e *Engine) SSHCAPublicKey(ctx context.Context) ([]byte, error) {
	s, err := e.sshSigner(ctx)
	if err != nil {
		return nil, err
	}
	return ssh.MarshalAuthorizedKey(s.PublicKey()), nil
}

// SSHRequest asks for an SSH certificate.
type SSHRequest = engines.SSHRequest

// SSHCert is a signed certificate.
type SSHCert = engines.SSHCert

// SignSSH signs an SSH public key under role r, refusing any principal the
// role does not allow.
func (e *Engine) SignSSH(ctx context.Context, r engines.Role, req SSHRequest) (*SSHCert, error) {
	ro, err := parseRole(r.Fields)
	if err != nil {
		return nil, err
	}
	if ro.kind == KindKey {
		return nil, fmt.Errorf("%w: %s is not an ssh_user or ssh_host role", engines.ErrInvalidRequest, r.Name)
	}
	if len(req.PublicKey) == 0 || len(req.PublicKey) > MaxPublicKey {
		return nil, fmt.Errorf("%w: public key must be 1-%d bytes", engines.ErrInvalidRequest, MaxPublicKey)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(req.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: public key is not in authorized_keys form: %v", engines.ErrInvalidRequest, err)
	}
	if err := checkSSHKey(pub); err != nil {
		return nil, err
	}
	// {{identity}} is the whole caller identity ("spiffe://…" or
	// "token:ID"), never a part of it: a part (the SPIFFE ID's last path
	// segment) is chosen by whoever may mint SVIDs under a wildcard, so
	// ".../ns/team-a/root" would be "root". Operator-chosen principals come
	// from principal_map.
	subst := strings.NewReplacer("{{identity}}", req.Identity)
	mapped := mappedPrincipals(ro.mapping, req.Identity)
	allowed := map[string]bool{}
	var allowedList []string
	for _, p := range ro.allowed {
		allowed[subst.Replace(p)] = true
		allowedList = append(allowedList, subst.Replace(p))
	}
	for _, p := range mapped {
		allowed[p] = true
		allowedList = append(allowedList, p)
	}
	principals := req.Principals
	if len(principals) == 0 {
		for _, p := range ro.defaults {
			principals = append(principals, subst.Replace(p))
		}
	}
	if len(principals) == 0 {
		principals = mapped
	}
	if len(principals) == 0 {
		return nil, fmt.Errorf("%w: name at least one principal (role %s has no default_principals and principal_map maps none to %s)",
			engines.ErrInvalidRequest, r.Name, req.Identity)
	}
	for _, p := range principals {
		if !allowed[p] && !allowed["*"] {
			if len(allowedList) == 0 {
				return nil, fmt.Errorf("%w: %q (role %s allows no principal to %s: add it to principal_map)", ErrPrincipalNotAllowed, p, r.Name, req.Identity)
			}
			return nil, fmt.Errorf("%w: %q (role %s allows %s only %s)", ErrPrincipalNotAllowed, p, r.Name, req.Identity, strings.Join(allowedList, ", "))
		}
	}
	ttl := ro.ttl
	if req.TTL > 0 {
		ttl = req.TTL
	}
	ttl = min(ttl, ro.maxTTL)
	signer, err := e.sshSigner(ctx)
	if err != nil {
		return nil, err
	}
	var sb [8]byte
	_, _ = rand.Read(sb[:])
	serial := uint64(sb[0])<<56 | uint64(sb[1])<<48 | uint64(sb[2])<<40 | uint64(sb[3])<<32 |
		uint64(sb[4])<<24 | uint64(sb[5])<<16 | uint64(sb[6])<<8 | uint64(sb[7])
	now := time.Now()
	certType := uint32(ssh.UserCert)
	if ro.kind == KindSSHHost {
		certType = ssh.HostCert
	}
	cert := &ssh.Certificate{
		Key: pub, Serial: serial, CertType: certType,
		KeyId:           "sigil:" + req.Identity + ":" + strconv.FormatUint(serial, 10),
		ValidPrincipals: principals,
		// Backdated for clock skew between Sigil and the servers.
		ValidAfter:  uint64(now.Add(-30 * time.Second).Unix()),
		ValidBefore: uint64(now.Add(ttl).Unix()),
		Permissions: ssh.Permissions{CriticalOptions: map[string]string{}, Extensions: map[string]string{}},
	}
	for k, v := range ro.critical {
		cert.CriticalOptions[k] = v
	}
	if ro.kind == KindSSHUser {
		for _, x := range ro.extensions {
			cert.Extensions[x] = ""
		}
	}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		return nil, fmt.Errorf("keys: sign SSH certificate: %w", err)
	}
	e.log.Info("SSH certificate signed", "role", r.Name, "serial", serial, "principals", principals, "valid_before", now.Add(ttl).UTC())
	return &SSHCert{Authorized: ssh.MarshalAuthorizedKey(cert), Serial: serial, KeyID: cert.KeyId,
		ValidBefore: time.Unix(int64(cert.ValidBefore), 0), Principals: principals}, nil
}

// checkSSHKey refuses weak keys: DSA, and RSA under 2048 bits.
func checkSSHKey(pub ssh.PublicKey) error {
	switch pub.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
		ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256:
		return nil
	case ssh.KeyAlgoRSA:
		cp, ok := pub.(ssh.CryptoPublicKey)
		if !ok {
			return fmt.Errorf("%w: unreadable RSA key", engines.ErrInvalidRequest)
		}
		if k, ok := cp.CryptoPublicKey().(*rsa.PublicKey); !ok || k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA keys must have at least 2048 bits", engines.ErrInvalidRequest)
		}
		return nil
	}
	return fmt.Errorf("%w: %s keys are not accepted (use ed25519, ecdsa or rsa ≥ 2048)", engines.ErrInvalidRequest, pub.Type())
}
