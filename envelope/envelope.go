// Package envelope seals a secret payload to one recipient's public key with
// HPKE (RFC 9180, Go's crypto/hpke), so that Sigil never returns a minted
// secret in clear over any API: only the holder of the recipient's private
// key can open it. The lease id is the AEAD associated data, so an envelope
// cannot be replayed as the secret of another lease.
//
// The wire format is versioned and documented in docs/envelope.md so that
// clients other than Sigil's own CLI can implement it.
package envelope

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hpke"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Version is the only wire-format version this package writes and reads.
const Version = 1

// Info is the HPKE info string of version 1. It separates Sigil envelopes
// from any other use of the same recipient key.
const Info = "sigil-envelope-v1"

// HPKE algorithm identifiers (RFC 9180 §7 and draft-ietf-hpke-pq).
const (
	KEMP256HKDFSHA256   uint16 = 0x0010 // DHKEM(P-256, HKDF-SHA256): certificate keys
	KEMX25519HKDFSHA256 uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256): the default
	KEMMLKEM768X25519   uint16 = 0x647a // MLKEM768-X25519 (X-Wing): post-quantum hybrid

	KDFHKDFSHA256 uint16 = 0x0001
	AEADAES256GCM uint16 = 0x0002
)

// MaxPayload bounds what Seal accepts and Open will decrypt; secrets are
// small, and a bound keeps a hostile envelope from costing much.
const MaxPayload = 4 << 20 // a kv secret of 2 MiB, base64 in JSON, fits

// headerLen is version(1) + kem(2) + kdf(2) + aead(2) + enc length(2).
const headerLen = 9

// Errors callers branch on.
var (
	// ErrUnsupported: an unknown version, KEM, KDF or AEAD, or a key type
	// that cannot be a recipient.
	ErrUnsupported = errors.New("envelope: unsupported")
	// ErrMalformed: bytes that are not an envelope.
	ErrMalformed = errors.New("envelope: malformed")
	// ErrOpen: decryption failed: wrong key, wrong lease id, or tampering.
	// Deliberately one error for all three, so it reveals nothing.
	ErrOpen = errors.New("envelope: cannot open")
	// ErrCertificate: a certificate recipient outside its validity period.
	ErrCertificate = errors.New("envelope: certificate not valid")
)

// Recipient is a public key an envelope is sealed to: the HPKE KEM id and
// the KEM's serialised public key (SerializePublicKey of RFC 9180: 32 bytes
// for X25519, a 65-byte uncompressed point for P-256, 1,216 bytes for
// MLKEM768-X25519).
type Recipient struct {
	KEM       uint16
	PublicKey []byte
}

// Envelope is one sealed payload.
type Envelope struct {
	Version    uint8
	KEM        uint16
	KDF        uint16
	AEAD       uint16
	Enc        []byte // the KEM encapsulation
	Ciphertext []byte // AEAD ciphertext with its tag
}

// kemFor returns the KEM for a supported id.
func kemFor(id uint16) (hpke.KEM, error) {
	switch id {
	case KEMX25519HKDFSHA256:
		return hpke.DHKEM(ecdh.X25519()), nil
	case KEMP256HKDFSHA256:
		return hpke.DHKEM(ecdh.P256()), nil
	case KEMMLKEM768X25519:
		return hpke.MLKEM768X25519(), nil
	}
	return nil, fmt.Errorf("%w: KEM 0x%04x", ErrUnsupported, id)
}

// KeyError says what is wrong with a recipient's public key, in words a
// person can act on. It matches ErrUnsupported (an unknown KEM) or
// ErrMalformed (a key that cannot be sealed to) under errors.Is.
type KeyError struct {
	KEM    uint16
	Reason string
	// Unsupported: the KEM itself is unknown, not the key.
	Unsupported bool
}

func (e *KeyError) Error() string {
	if e.Unsupported {
		return e.Reason
	}
	return fmt.Sprintf("%s public key (KEM 0x%04x): %s", kemName(e.KEM), e.KEM, e.Reason)
}

// Is lets callers keep branching on the sentinel errors.
func (e *KeyError) Is(target error) bool {
	if e.Unsupported {
		return target == ErrUnsupported
	}
	return target == ErrMalformed
}

// kemName is a KEM's name for messages.
func kemName(id uint16) string {
	switch id {
	case KEMX25519HKDFSHA256:
		return "X25519"
	case KEMP256HKDFSHA256:
		return "P-256"
	case KEMMLKEM768X25519:
		return "MLKEM768-X25519"
	}
	return fmt.Sprintf("KEM 0x%04x", id)
}

// keySize is the serialised public key length of each supported KEM.
var keySize = map[uint16]int{KEMX25519HKDFSHA256: 32, KEMP256HKDFSHA256: 65, KEMMLKEM768X25519: 1216}

// publicKey parses a recipient: a supported KEM and a key of that KEM's
// length that decodes. Whether a secret can be sealed to it needs an
// encapsulation, which NewSealer does.
func (r Recipient) publicKey() (hpke.PublicKey, error) {
	kem, err := kemFor(r.KEM)
	if err != nil {
		return nil, &KeyError{KEM: r.KEM, Unsupported: true, Reason: fmt.Sprintf(
			"KEM 0x%04x is not supported: use 0x%04x (X25519), 0x%04x (P-256) or 0x%04x (MLKEM768-X25519)",
			r.KEM, KEMX25519HKDFSHA256, KEMP256HKDFSHA256, KEMMLKEM768X25519)}
	}
	if want := keySize[r.KEM]; len(r.PublicKey) != want {
		reason := fmt.Sprintf("is %d bytes, want %d", len(r.PublicKey), want)
		for id, n := range keySize {
			if id != r.KEM && n == len(r.PublicKey) {
				reason += fmt.Sprintf(" (%d bytes is a %s key: send KEM 0x%04x)", n, kemName(id), id)
			}
		}
		return nil, &KeyError{KEM: r.KEM, Reason: reason}
	}
	pk, err := kem.NewPublicKey(r.PublicKey)
	if err != nil {
		return nil, &KeyError{KEM: r.KEM, Reason: "not a valid point on the curve"}
	}
	return pk, nil
}

// encapsulate runs the KEM to pk: a fresh ephemeral key, the sender's HPKE
// context and its encapsulation. It fails on a key no secret can be sealed
// to: a low-order X25519 point (all zeros, say) parses but yields no
// shared secret.
func encapsulate(r Recipient, pk hpke.PublicKey) ([]byte, *hpke.Sender, error) {
	enc, s, err := hpke.NewSender(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), []byte(Info))
	if err != nil {
		return nil, nil, &KeyError{KEM: r.KEM, Reason: "a low-order point (such as all zeros) that no secret can be sealed to"}
	}
	return enc, s, nil
}

// Sealer is a checked recipient with the KEM encapsulation of its first
// envelope already done. A server resolves the recipient with NewSealer
// before it reads or mints anything (a bad key is refused then, as
// Validate would), and the encapsulation that proved the key usable is
// the one the secret is then sealed with, instead of a trial run thrown
// away and a second one at Seal: each envelope still has its own fresh
// ephemeral key and HPKE context, used for exactly one message. A Sealer
// is safe for concurrent use; seals after the first encapsulate afresh.
type Sealer struct {
	r  Recipient
	pk hpke.PublicKey

	mu  sync.Mutex
	enc []byte       // nil once used
	s   *hpke.Sender // nil once used
}

// NewSealer checks r (as Validate does; its error is a *KeyError) and
// prepares the encapsulation of one envelope to it.
func (r Recipient) NewSealer() (*Sealer, error) {
	pk, err := r.publicKey()
	if err != nil {
		return nil, err
	}
	enc, s, err := encapsulate(r, pk)
	if err != nil {
		return nil, err
	}
	return &Sealer{r: Recipient{KEM: r.KEM, PublicKey: bytes.Clone(r.PublicKey)}, pk: pk, enc: enc, s: s}, nil
}

// Recipient is the key the Sealer seals to.
func (s *Sealer) Recipient() Recipient {
	return Recipient{KEM: s.r.KEM, PublicKey: bytes.Clone(s.r.PublicKey)}
}

// SealsTo reports whether r is the Sealer's recipient.
func (s *Sealer) SealsTo(r Recipient) bool {
	return r.KEM == s.r.KEM && bytes.Equal(r.PublicKey, s.r.PublicKey)
}

// take returns the prepared encapsulation, or a fresh one once it has been
// used, so no HPKE context ever seals two messages.
func (s *Sealer) take() ([]byte, *hpke.Sender, error) {
	s.mu.Lock()
	enc, snd := s.enc, s.s
	s.enc, s.s = nil, nil
	s.mu.Unlock()
	if snd != nil {
		return enc, snd, nil
	}
	return encapsulate(s.r, s.pk)
}

// Seal encrypts payload to the Sealer's recipient, binding it to leaseID.
func (s *Sealer) Seal(leaseID string, payload []byte) (*Envelope, error) {
	if len(payload) > MaxPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrUnsupported, len(payload), MaxPayload)
	}
	enc, snd, err := s.take()
	if err != nil {
		return nil, err
	}
	// The lease id is the associated data of the one message of this
	// context: the recipient must name the same lease to open it.
	ct, err := snd.Seal([]byte(leaseID), payload)
	if err != nil {
		return nil, fmt.Errorf("envelope: seal: %w", err)
	}
	return &Envelope{Version: Version, KEM: s.r.KEM, KDF: KDFHKDFSHA256, AEAD: AEADAES256GCM, Enc: enc, Ciphertext: ct}, nil
}

// SealData seals a secret's fields as the version 1 payload (see the
// package function SealData).
func (s *Sealer) SealData(leaseID string, data map[string]string) (*Envelope, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("envelope: encode payload: %w", err)
	}
	env, err := s.Seal(leaseID, b)
	clear(b)
	return env, err
}

// Validate checks that the recipient is a well-formed key of a supported
// KEM that a secret can be sealed to, so a server can refuse a bad request
// before minting anything. Its error is a *KeyError.
func (r Recipient) Validate() error {
	_, err := r.NewSealer()
	return err
}

// GenerateKey returns a fresh key pair for kem (what the CLI does per
// request). The private key serialises with hpke.PrivateKey.Bytes.
func GenerateKey(kem uint16) (hpke.PrivateKey, Recipient, error) {
	k, err := kemFor(kem)
	if err != nil {
		return nil, Recipient{}, err
	}
	priv, err := k.GenerateKey()
	if err != nil {
		return nil, Recipient{}, fmt.Errorf("envelope: generate key: %w", err)
	}
	return priv, Recipient{KEM: kem, PublicKey: priv.PublicKey().Bytes()}, nil
}

// ParsePrivateKey deserialises a private key of kem (DeserializePrivateKey of
// RFC 9180; for MLKEM768-X25519 the 32-byte seed).
func ParsePrivateKey(kem uint16, b []byte) (hpke.PrivateKey, error) {
	k, err := kemFor(kem)
	if err != nil {
		return nil, err
	}
	priv, err := k.NewPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %v", ErrMalformed, err)
	}
	return priv, nil
}

// PrivateKeyFromECDSA turns a P-256 certificate key into an HPKE
// DHKEM(P-256) private key, so a workload opens envelopes sealed to its
// certificate with the key it already holds.
func PrivateKeyFromECDSA(k *ecdsa.PrivateKey) (hpke.PrivateKey, error) {
	e, err := k.ECDH()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	if e.Curve() != ecdh.P256() {
		return nil, fmt.Errorf("%w: only P-256 certificate keys", ErrUnsupported)
	}
	return hpke.NewDHKEMPrivateKey(e)
}

// RecipientFromCertificate returns the DHKEM(P-256) recipient for a
// certificate's ECDSA P-256 public key, refusing a certificate that is not
// valid at now. Whether the certificate is revoked is the caller's check
// (it needs the inventory); the caller must also have verified the chain.
func RecipientFromCertificate(cert *x509.Certificate, now time.Time) (Recipient, error) {
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return Recipient{}, fmt.Errorf("%w: valid %s to %s", ErrCertificate,
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return Recipient{}, fmt.Errorf("%w: certificate key %T (want ECDSA P-256)", ErrUnsupported, cert.PublicKey)
	}
	e, err := pub.ECDH()
	if err != nil || e.Curve() != ecdh.P256() {
		return Recipient{}, fmt.Errorf("%w: certificate key is not P-256", ErrUnsupported)
	}
	return Recipient{KEM: KEMP256HKDFSHA256, PublicKey: e.Bytes()}, nil
}

// Seal encrypts payload to the recipient, binding it to leaseID.
func Seal(r Recipient, leaseID string, payload []byte) (*Envelope, error) {
	if len(payload) > MaxPayload {
		return nil, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrUnsupported, len(payload), MaxPayload)
	}
	s, err := r.NewSealer()
	if err != nil {
		return nil, err
	}
	return s.Seal(leaseID, payload)
}

// Open decrypts an envelope sealed to priv for leaseID. Any mismatch of key,
// lease id or content yields ErrOpen.
func Open(priv hpke.PrivateKey, e *Envelope, leaseID string) ([]byte, error) {
	if e == nil || e.Version != Version {
		return nil, fmt.Errorf("%w: version", ErrUnsupported)
	}
	if e.KDF != KDFHKDFSHA256 || e.AEAD != AEADAES256GCM {
		return nil, fmt.Errorf("%w: suite KDF 0x%04x AEAD 0x%04x", ErrUnsupported, e.KDF, e.AEAD)
	}
	if priv.KEM().ID() != e.KEM {
		return nil, fmt.Errorf("%w: envelope is for KEM 0x%04x, key is 0x%04x", ErrOpen, e.KEM, priv.KEM().ID())
	}
	if len(e.Ciphertext) > MaxPayload+16 {
		return nil, fmt.Errorf("%w: ciphertext too long", ErrMalformed)
	}
	r, err := hpke.NewRecipient(e.Enc, priv, hpke.HKDFSHA256(), hpke.AES256GCM(), []byte(Info))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrOpen, err)
	}
	pt, err := r.Open([]byte(leaseID), e.Ciphertext)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// MarshalBinary encodes the envelope:
//
//	version(1) kem(2) kdf(2) aead(2) len(enc)(2) enc ciphertext
//
// integers big-endian; the ciphertext runs to the end.
func (e *Envelope) MarshalBinary() ([]byte, error) {
	if len(e.Enc) > 0xffff {
		return nil, fmt.Errorf("%w: enc too long", ErrMalformed)
	}
	b := make([]byte, headerLen, headerLen+len(e.Enc)+len(e.Ciphertext))
	b[0] = e.Version
	binary.BigEndian.PutUint16(b[1:], e.KEM)
	binary.BigEndian.PutUint16(b[3:], e.KDF)
	binary.BigEndian.PutUint16(b[5:], e.AEAD)
	binary.BigEndian.PutUint16(b[7:], uint16(len(e.Enc)))
	b = append(b, e.Enc...)
	return append(b, e.Ciphertext...), nil
}

// UnmarshalBinary decodes what MarshalBinary produced; it copies b.
func (e *Envelope) UnmarshalBinary(b []byte) error {
	if len(b) < headerLen {
		return fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if b[0] != Version {
		return fmt.Errorf("%w: version %d", ErrUnsupported, b[0])
	}
	n := int(binary.BigEndian.Uint16(b[7:]))
	if len(b) < headerLen+n {
		return fmt.Errorf("%w: truncated enc", ErrMalformed)
	}
	*e = Envelope{
		Version:    b[0],
		KEM:        binary.BigEndian.Uint16(b[1:]),
		KDF:        binary.BigEndian.Uint16(b[3:]),
		AEAD:       binary.BigEndian.Uint16(b[5:]),
		Enc:        append([]byte(nil), b[headerLen:headerLen+n]...),
		Ciphertext: append([]byte(nil), b[headerLen+n:]...),
	}
	return nil
}

// String returns the binary encoding in unpadded base64url, the text form
// carried in JSON and printed by tools.
func (e *Envelope) String() string {
	b, err := e.MarshalBinary()
	if err != nil {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Parse decodes the text form.
func Parse(s string) (*Envelope, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: base64url: %v", ErrMalformed, err)
	}
	var e Envelope
	if err := e.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return &e, nil
}

// SealData seals a secret's fields as the version 1 payload: a UTF-8 JSON
// object of string values.
func SealData(r Recipient, leaseID string, data map[string]string) (*Envelope, error) {
	s, err := r.NewSealer()
	if err != nil {
		return nil, err
	}
	return s.SealData(leaseID, data)
}

// OpenData opens an envelope made by SealData.
func OpenData(priv hpke.PrivateKey, e *Envelope, leaseID string) (map[string]string, error) {
	b, err := Open(priv, e, leaseID)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	var data map[string]string
	if err := json.Unmarshal(b, &data); err != nil {
		return nil, fmt.Errorf("%w: payload is not a JSON object of strings", ErrMalformed)
	}
	return data, nil
}
