// Package seal protects Sigil's master key with a k-of-n quorum of operators:
// it splits the key into Shamir shares (HashiCorp Vault's MPL-2.0 shamir
// package), optionally encrypts each share to its operator's public key with
// HPKE (RFC 9180), and reassembles the key one share at a time, rejecting a
// wrong share as soon as it is offered.
//
// The master key itself is never stored. What is stored, the Config, holds
// only keyed tags of the shares, so a wrong or duplicate share is recognised
// without consuming the good ones already given.
package seal

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/hashicorp/vault/shamir"
)

// Errors callers branch on.
var (
	ErrWrongShare     = errors.New("share does not belong to this server's master key")
	ErrDuplicateShare = errors.New("share was already given")
	ErrBadShare       = errors.New("malformed share")
)

// sharePrefix marks an encoded share so it is recognisable (and findable by
// secret scanners) wherever it is pasted.
const sharePrefix = "sgs1_"

// encSharePrefix marks a share encrypted to an operator's key.
const encSharePrefix = "sgse1_"

// Config is what the server stores about its shares: no share and no key,
// only keyed tags that recognise genuine shares.
type Config struct {
	Shares    int      `json:"shares"`
	Threshold int      `json:"threshold"`
	Salt      []byte   `json:"salt"`
	Tags      [][]byte `json:"tags"`
}

// Marshal encodes the config for storage.
func (c *Config) Marshal() ([]byte, error) { return json.Marshal(c) }

// ParseConfig decodes a stored config.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("seal config: %w", err)
	}
	if c.Threshold < 1 || c.Shares < c.Threshold || len(c.Tags) != c.Shares || len(c.Salt) == 0 {
		return nil, errors.New("seal config: inconsistent shares/threshold/tags")
	}
	return &c, nil
}

func (c *Config) tag(share []byte) []byte {
	m := hmac.New(sha256.New, c.Salt)
	m.Write(share)
	return m.Sum(nil)
}

// known reports whether share is one of the original shares, comparing every
// tag in constant time.
func (c *Config) known(share []byte) bool {
	t := c.tag(share)
	found := 0
	for _, k := range c.Tags {
		found |= subtle.ConstantTimeCompare(k, t)
	}
	return found == 1
}

// Split splits master into n shares of which any threshold reassemble it.
// A threshold of 1 with one share is allowed (one operator holds the key).
func Split(master []byte, n, threshold int) (*Config, [][]byte, error) {
	if threshold < 1 || n < threshold || n > 255 {
		return nil, nil, fmt.Errorf("need 1 <= threshold (%d) <= shares (%d) <= 255", threshold, n)
	}
	var shares [][]byte
	if n == 1 {
		// shamir.Split needs at least two parts; one share is the key itself.
		shares = [][]byte{append([]byte(nil), master...)}
	} else if threshold == 1 {
		return nil, nil, errors.New("a threshold of 1 with several shares would hand every operator the whole key; use threshold >= 2 or one share")
	} else {
		var err error
		if shares, err = shamir.Split(master, n, threshold); err != nil {
			return nil, nil, fmt.Errorf("split master key: %w", err)
		}
	}
	cfg := &Config{Shares: n, Threshold: threshold, Salt: make([]byte, 32)}
	if _, err := rand.Read(cfg.Salt); err != nil {
		return nil, nil, err
	}
	for _, s := range shares {
		cfg.Tags = append(cfg.Tags, cfg.tag(s))
	}
	return cfg, shares, nil
}

// EncodeShare renders a share for an operator.
func EncodeShare(share []byte) string {
	return sharePrefix + base64.RawURLEncoding.EncodeToString(share)
}

// DecodeShare parses an encoded share.
func DecodeShare(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, sharePrefix)
	if !ok {
		if strings.HasPrefix(s, encSharePrefix) {
			return nil, fmt.Errorf("%w: this share is encrypted; decrypt it first with `sigil operator decrypt-share`", ErrBadShare)
		}
		return nil, fmt.Errorf("%w: expected a share starting with %q", ErrBadShare, sharePrefix)
	}
	if len(rest) > 1024 {
		return nil, fmt.Errorf("%w: too long", ErrBadShare)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(b) < 2 {
		return nil, fmt.Errorf("%w: not valid base64url", ErrBadShare)
	}
	return b, nil
}

// Progress collects shares until the threshold is reached. It is safe for
// concurrent use.
type Progress struct {
	cfg    *Config
	mu     sync.Mutex
	shares [][]byte
}

// NewProgress starts collecting shares for cfg.
func NewProgress(cfg *Config) *Progress { return &Progress{cfg: cfg} }

// Add offers one share. It returns the master key when this share completes
// the threshold, and nil otherwise. A wrong or repeated share is rejected
// and the shares already given are kept.
func (p *Progress) Add(share []byte) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cfg.known(share) {
		return nil, ErrWrongShare
	}
	for _, s := range p.shares {
		if subtle.ConstantTimeCompare(s, share) == 1 {
			return nil, ErrDuplicateShare
		}
	}
	p.shares = append(p.shares, append([]byte(nil), share...))
	if len(p.shares) < p.cfg.Threshold {
		return nil, nil
	}
	defer p.resetLocked()
	if p.cfg.Shares == 1 {
		return append([]byte(nil), p.shares[0]...), nil
	}
	master, err := shamir.Combine(p.shares)
	if err != nil {
		return nil, fmt.Errorf("combine shares: %w", err)
	}
	return master, nil
}

// Count returns how many shares have been given so far.
func (p *Progress) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.shares)
}

// Threshold returns how many shares unseal.
func (p *Progress) Threshold() int { return p.cfg.Threshold }

// Reset forgets the shares given so far.
func (p *Progress) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
}

func (p *Progress) resetLocked() {
	for _, s := range p.shares {
		clear(s)
	}
	p.shares = nil
}

// hpkeInfo binds encrypted shares to their purpose.
var hpkeInfo = []byte("sigil unseal share v1")

// ParseRecipient reads an operator's X25519 public key (PEM "PUBLIC KEY",
// as written by `openssl genpkey -algorithm X25519` then `openssl pkey -pubout`).
func ParseRecipient(pemBytes []byte) (*ecdh.PublicKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("expected a PEM \"PUBLIC KEY\" block")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	k, ok := pub.(*ecdh.PublicKey)
	if !ok || k.Curve() != ecdh.X25519() {
		return nil, fmt.Errorf("public key is %T; share recipients must be X25519 keys", pub)
	}
	return k, nil
}

// EncryptShare seals an encoded share to an operator's X25519 key with HPKE
// (DHKEM(X25519), HKDF-SHA256, AES-256-GCM).
func EncryptShare(to *ecdh.PublicKey, share []byte) (string, error) {
	pk, err := hpke.NewDHKEMPublicKey(to)
	if err != nil {
		return "", err
	}
	ct, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), hpkeInfo, []byte(EncodeShare(share)))
	if err != nil {
		return "", fmt.Errorf("encrypt share: %w", err)
	}
	return encSharePrefix + base64.RawURLEncoding.EncodeToString(ct), nil
}

// DecryptShare opens an encrypted share with the operator's private key
// (PEM PKCS#8 X25519) and returns the encoded share.
func DecryptShare(privPEM []byte, enc string) (string, error) {
	block, _ := pem.Decode(privPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return "", errors.New("expected a PEM \"PRIVATE KEY\" block (PKCS#8)")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("parse private key: %w", err)
	}
	k, ok := key.(*ecdh.PrivateKey)
	if !ok || k.Curve() != ecdh.X25519() {
		return "", fmt.Errorf("private key is %T; expected X25519", key)
	}
	rest, ok := strings.CutPrefix(strings.TrimSpace(enc), encSharePrefix)
	if !ok {
		return "", fmt.Errorf("%w: expected an encrypted share starting with %q", ErrBadShare, encSharePrefix)
	}
	ct, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", fmt.Errorf("%w: not valid base64url", ErrBadShare)
	}
	sk, err := hpke.NewDHKEMPrivateKey(k)
	if err != nil {
		return "", err
	}
	pt, err := hpke.Open(sk, hpke.HKDFSHA256(), hpke.AES256GCM(), hpkeInfo, ct)
	if err != nil {
		return "", errors.New("decrypt share: not encrypted to this key, or corrupted")
	}
	return string(pt), nil
}
