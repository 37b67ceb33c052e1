package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// SignRequest asks for a certificate.
type SignRequest struct {
	CSR []byte // PEM or DER, at most MaxCSRSize bytes
	// Checked, if set, is the CSR already parsed and its signature
	// verified (CheckCSR); CSR is then not read. A caller that looks at the
	// CSR before issuing saves a second parse and signature check.
	Checked   *CheckedCSR
	Profile   string        // default "server"
	TTL       time.Duration // 0: the profile's default; at least MinTTL; capped to the profile maximum (with a warning)
	Requester string        // identity of the caller, recorded in the inventory
	// Authorize is the caller's grant check: it sees every name the
	// certificate will carry and refuses with an error. May be nil.
	Authorize func(names Names) error
	// Serial, if set, is the serial to use, from NewSerial: callers that
	// must record a certificate's serial before it exists (a lease) pick
	// it first. Empty: a fresh random serial.
	Serial string
	// InRecord, if set, runs inside the transaction that records the
	// certificate, after its inventory row (rec) is written: what it writes
	// commits with the certificate or not at all, and its error fails the
	// issuance (the certificate is never returned). The transaction may be
	// shared with other issuances (group commit), and after a failed batch
	// InRecord runs again in a transaction of its own, so it must write
	// only through tx and keep no state between runs.
	InRecord func(ctx context.Context, tx storage.Repos, rec *storage.Certificate) error
	// InBatch, if set, is written in that transaction too, like InRecord,
	// but with the InBatch items of every other issuance in it that have
	// the same Writer: one Writer.WriteTx call per transaction, after every
	// inventory row and InRecord, with their items in order. A write with a
	// fixed cost per transaction (the audit log's head) then pays it once
	// per batch. Its error fails every issuance of the transaction; the
	// group commit then retries each in a transaction of its own, so only
	// the issuance whose item fails is refused. The same rules as for
	// InRecord apply: write only through tx, keep no state between runs.
	InBatch *BatchWrite
}

// BatchWrite is one issuance's part of a write that a transaction's
// issuances share (SignRequest.InBatch).
type BatchWrite struct {
	Writer BatchWriter
	Item   any
}

// BatchWriter writes, inside tx, the items of the issuances of one
// transaction. Writers are grouped by identity (==), so use a pointer.
type BatchWriter interface {
	WriteTx(ctx context.Context, tx storage.Repos, items []any) error
}

// recordHooks is what commits with a certificate besides its row.
type recordHooks struct {
	in    func(ctx context.Context, tx storage.Repos, rec *storage.Certificate) error
	batch *BatchWrite
}

// Names are the names a certificate will carry.
type Names struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	URIs       []*url.URL
	Emails     []string
}

// All returns every name as a string (SANs, then the common name if it is
// not also a SAN).
func (n Names) All() []string {
	var out []string
	out = append(out, n.DNSNames...)
	for _, ip := range n.IPs {
		out = append(out, ip.String())
	}
	for _, u := range n.URIs {
		out = append(out, u.String())
	}
	out = append(out, n.Emails...)
	if n.CommonName != "" && !slices.Contains(out, n.CommonName) {
		out = append(out, n.CommonName)
	}
	return out
}

// Issued is a signed and recorded certificate.
type Issued struct {
	Certificate *x509.Certificate
	DER         []byte
	Chain       []*x509.Certificate // issuing intermediate then root
	Record      *storage.Certificate
	// Warnings say what was adjusted from the request (a capped TTL).
	Warnings []string

	chainPEM string // Chain PEM encoded, cached by the issuer ("" if not)
}

// ChainPEM returns the certificate followed by its chain, PEM encoded.
func (is *Issued) ChainPEM() []byte {
	chain := is.IssuerChainPEM()
	out := make([]byte, 0, pemLen(is.DER)+len(chain))
	return append(appendPEM(out, is.DER), chain...)
}

// IssuerChainPEM returns Chain, PEM encoded. The issuer encodes its chain
// once, so serving it with every certificate costs no encoding.
func (is *Issued) IssuerChainPEM() string {
	if is.chainPEM != "" || len(is.Chain) == 0 {
		return is.chainPEM
	}
	return PEMCertificates(is.Chain...)
}

// CheckedCSR is a CSR that CheckCSR parsed and whose signature it
// verified; only this package makes one, so Sign can trust it.
type CheckedCSR struct{ csr *x509.CertificateRequest }

// CheckCSR is ParseCSR, its result kept for SignRequest.Checked.
func CheckCSR(data []byte) (*CheckedCSR, error) {
	csr, err := ParseCSR(data)
	if err != nil {
		return nil, err
	}
	return &CheckedCSR{csr: csr}, nil
}

// Request is the parsed CSR; callers must not modify it.
func (c *CheckedCSR) Request() *x509.CertificateRequest { return c.csr }

// csr returns the request's CSR, parsed and verified.
func (r *SignRequest) csr() (*x509.CertificateRequest, error) {
	if r.Checked != nil {
		if r.Checked.csr == nil {
			return nil, errf(KindBadCSR, "sign", nil, "a CheckedCSR not made by CheckCSR")
		}
		return r.Checked.csr, nil
	}
	return ParseCSR(r.CSR)
}

// ParseCSR decodes (PEM or DER), bounds and parses a CSR and checks its
// signature.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	const op = "sign"
	if len(data) > MaxCSRSize {
		return nil, errf(KindBadCSR, op, ErrCSRTooLarge, "CSR is %d bytes, the limit is %d", len(data), MaxCSRSize)
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, errf(KindBadCSR, op, nil, "PEM block is %q, want CERTIFICATE REQUEST", b.Type)
		}
		der = b.Bytes
	} else if len(data) > 0 && data[0] != 0x30 {
		return nil, errf(KindBadCSR, op, nil, "CSR is neither PEM nor DER")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, errf(KindBadCSR, op, err, "malformed CSR")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errf(KindBadCSR, op, err, "CSR signature does not verify")
	}
	return csr, nil
}

// Sign issues a certificate from a CSR under a profile. The certificate is
// signed, recorded in the inventory in one transaction, and returned only
// after that transaction commits. CA profiles are refused (ErrCAProfile):
// subordinate CAs are issued only by SignIntermediate.
func (a *Authority) Sign(ctx context.Context, req SignRequest) (*Issued, error) {
	const op = "sign"
	p, err := a.signingProfile(op, req.Profile)
	if err != nil {
		return nil, err
	}
	if p.cfg.IsCA {
		// Reachable by anyone with ca/sign/<profile>: a CA certificate
		// signed by the root could sign any name (security review #1).
		return nil, errf(KindForbidden, op, ErrCAProfile,
			"profile %q issues CA certificates; a subordinate CA is issued only by `sigil ca sign-intermediate` (sys/ca/sign/%s with sudo), with name constraints", p.name, p.name)
	}
	return a.signWith(ctx, op, p, req, nil)
}

// signingProfile resolves a profile name a caller may use.
func (a *Authority) signingProfile(op, name string) (*profile, error) {
	if name == "" {
		name = ProfileServer
	}
	p, ok := a.profiles[name]
	if !ok || name == profileOCSPSigner {
		return nil, errf(KindNotFound, op, nil, "unknown profile %q", name)
	}
	return p, nil
}

// signWith checks the CSR and names against p, picks and checks the
// issuer, builds the template (adjust, if set, amends it) and issues.
func (a *Authority) signWith(ctx context.Context, op string, p *profile, req SignRequest, adjust func(*x509.Certificate)) (*Issued, error) {
	csr, err := req.csr()
	if err != nil {
		return nil, err
	}
	if err := a.checkSubjectKey(p, csr.PublicKey); err != nil {
		return nil, err
	}
	names, err := a.checkNames(p, csr)
	if err != nil {
		return nil, err
	}
	if req.Authorize != nil {
		if err := req.Authorize(names); err != nil {
			return nil, errf(KindUnauthorized, op, err, "names %v not granted", names.All())
		}
	}
	var is *issuer
	if p.signedByRoot {
		is = a.rootIssuer()
	} else {
		is = a.activeIssuer()
	}
	if is == nil {
		return nil, errf(KindNotInitialized, op, ErrNotInitialized, "no issuer for profile %q", p.name)
	}
	if err := a.usable(ctx, op, is, p.name, req.Requester); err != nil {
		return nil, err
	}
	var serial *big.Int
	if req.Serial != "" {
		// Chosen in advance with NewSerial (so a lease could record it
		// before the certificate existed); a reused serial fails at the
		// inventory insert, which is unique on it.
		if serial, err = parsePreSerial(req.Serial); err != nil {
			return nil, err
		}
	}
	tmpl, warnings, err := a.template(p, is, csr, names, req.TTL, serial)
	if err != nil {
		return nil, err
	}
	if adjust != nil {
		adjust(tmpl)
	}
	iss, err := a.issue(ctx, p, is, tmpl, csr.PublicKey, req.Requester, recordHooks{in: req.InRecord, batch: req.InBatch})
	if err != nil {
		return nil, err
	}
	iss.Warnings = warnings
	return iss, nil
}

// template builds the to-be-signed certificate.
//
// The TTL: 0 means the profile default; below MinTTL or negative is
// refused; above the profile maximum it is capped, and so is a lifetime past
// the issuer's own expiry, each with a warning returned for the caller.
func (a *Authority) template(p *profile, is *issuer, csr *x509.CertificateRequest, names Names, ttl time.Duration, serial *big.Int) (*x509.Certificate, []string, error) {
	const op = "sign"
	now := a.now()
	if ttl < 0 {
		return nil, nil, errf(KindBadRequest, op, nil, "negative TTL %v", ttl)
	}
	if ttl > 0 && ttl < MinTTL {
		return nil, nil, errf(KindBadRequest, op, nil, "TTL %v is below the minimum of %v", ttl, MinTTL)
	}
	var warnings []string
	if ttl == 0 {
		ttl = p.defaultTTL
	}
	if ttl > p.maxTTL {
		warnings = append(warnings, fmt.Sprintf("requested TTL %v exceeds the maximum %v of profile %q: capped to %v", ttl, p.maxTTL, p.name, p.maxTTL))
		ttl = p.maxTTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(is.cert.NotAfter) {
		notAfter = is.cert.NotAfter
		warnings = append(warnings, fmt.Sprintf("lifetime capped to the issuer's expiry %s", notAfter.UTC().Format(time.RFC3339)))
	}
	if !notAfter.After(now) {
		// usable refuses expired issuers first; this is a backstop.
		return nil, nil, errf(KindIssuerUnusable, op, ErrIssuerExpired, "issuer %s has expired", is.rec.ID)
	}
	if serial == nil {
		var err error
		if serial, err = randomSerial(); err != nil {
			return nil, nil, errf(KindInternal, op, err, "serial")
		}
	}
	ski, err := subjectKeyID(csr.PublicKey)
	if err != nil {
		return nil, nil, errf(KindBadCSR, op, err, "subject key")
	}
	shard := a.shardFor(is, serial)
	t := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              p.keyUsage,
		ExtKeyUsage:           p.extKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  p.cfg.IsCA,
		SubjectKeyId:          ski,
		AuthorityKeyId:        is.cert.SubjectKeyId,
		DNSNames:              names.DNSNames,
		IPAddresses:           names.IPs,
		URIs:                  names.URIs,
		EmailAddresses:        names.Emails,
		CRLDistributionPoints: []string{a.CRLURL(is.rec.ID, shard)},
		OCSPServer:            []string{a.OCSPURL()},
		IssuingCertificateURL: []string{a.IssuerCertURL(is.rec.ID)},
	}
	// RSA key encipherment only makes sense for RSA subject keys (TLS 1.2
	// RSA key exchange); zlint flags it on ECDSA/Ed25519 keys.
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); !isRSA {
		t.KeyUsage &^= x509.KeyUsageKeyEncipherment
	}
	if p.cfg.IsCA {
		switch {
		case p.cfg.MaxPathLen < 0:
			t.MaxPathLen = -1
		case p.cfg.MaxPathLen == 0:
			t.MaxPathLenZero = true
		default:
			t.MaxPathLen = p.cfg.MaxPathLen
		}
	}
	switch {
	case p.cfg.CopySubject:
		t.Subject = csr.Subject
		t.Subject.ExtraNames = nil
	case p.cfg.SPIFFE:
		// Empty subject: Go then marks the SAN extension critical, as RFC
		// 5280 4.2.1.6 requires.
	case p.cfg.OmitCommonName:
		// The requested common name is kept when it is one of the DNS SANs
		// (written as the SAN is, which lint checks): tools and people
		// still read it, and step-ca keeps it too. Otherwise the subject
		// is empty.
		if cn, ok := commonNameFromSAN(names); ok {
			t.Subject = pkix.Name{CommonName: cn}
		}
	default:
		t.Subject = pkix.Name{CommonName: names.CommonName}
	}
	return t, warnings, nil
}

// shardFor is a certificate's CRL shard: a fixed function of its serial.
func (a *Authority) shardFor(is *issuer, serial *big.Int) int {
	return int(new(big.Int).Mod(serial, big.NewInt(int64(a.shardsOf(is)))).Int64())
}

// issue lints tmpl, signs it, and records it in one transaction.
// with's hooks, if set, commit in the same transaction as the record.
func (a *Authority) issue(ctx context.Context, p *profile, is *issuer, tmpl *x509.Certificate, pub crypto.PublicKey, requester string,
	with recordHooks) (*Issued, error) {
	const op = "sign"
	signer, err := a.signerFor(ctx, is)
	if err != nil {
		return nil, err
	}
	lintDER, err := a.lint(tmpl, is.cert, pub, signer.Public())
	if err != nil {
		return nil, err
	}
	rec := &storage.Certificate{
		Serial:    serialHex(tmpl.SerialNumber),
		IssuerID:  is.rec.ID,
		Subject:   tmpl.Subject.String(),
		DNSNames:  tmpl.DNSNames,
		Emails:    tmpl.EmailAddresses,
		NotBefore: tmpl.NotBefore.UTC(),
		NotAfter:  tmpl.NotAfter.UTC(),
		Profile:   p.name,
		Requester: requester,
		Status:    storage.CertValid,
		CRLShard:  a.shardFor(is, tmpl.SerialNumber),
	}
	for _, ip := range tmpl.IPAddresses {
		rec.IPs = append(rec.IPs, ip.String())
	}
	for _, u := range tmpl.URIs {
		rec.URIs = append(rec.URIs, u.String())
	}
	// The real key signs the TBSCertificate lint just passed, byte for
	// byte (signTBS), and the signature is checked under the issuer's key.
	// Sign before the transaction, not inside it: the signature (and its
	// check) is the most expensive step, and on
	// SQLite a transaction holds the store's single write gate, so signing
	// inside it serialised every issuance behind one lock. The invariant is
	// unchanged: the certificate leaves this function only after its
	// record commits; if the transaction fails the signed DER is dropped
	// here and never seen by anyone.
	der, cert, err := signTBS(lintDER, is.cert, signer)
	if err != nil {
		return nil, errf(KindInternal, op, err, "signing with issuer %s", is.rec.ID)
	}
	rec.DER = der
	err = a.record(ctx, rec, with)
	if err != nil {
		var ce *Error
		if !errors.As(err, &ce) {
			err = errf(KindInternal, op, err, "issuance transaction")
		}
		return nil, err
	}
	a.log.Info("ca: issued", "serial", rec.Serial, "profile", p.name, "issuer", is.rec.ID, "requester", requester, "not_after", rec.NotAfter)
	return &Issued{Certificate: cert, DER: cert.Raw, Chain: a.chainOf(is), Record: rec, chainPEM: is.chainPEM}, nil
}

// NewSerial returns a fresh serial in the inventory's hex form for
// SignRequest.Serial: 128 random bits, like every serial the CA makes.
func NewSerial() string {
	s, _ := randomSerial() // crypto/rand.Read never fails
	return serialHex(s)
}

// parsePreSerial checks a serial from NewSerial: positive, at most 20
// octets (RFC 5280 §4.1.2.2), and at least 64 bits long, as a random
// serial of 128 bits almost always is (CA/B BR §7.1 asks for 64 random
// bits; anything shorter was not made by NewSerial).
func parsePreSerial(hexSerial string) (*big.Int, error) {
	s, ok := new(big.Int).SetString(hexSerial, 16)
	if !ok || s.Sign() <= 0 || len(s.Bytes()) > 20 || s.BitLen() < 64 {
		return nil, errf(KindBadRequest, "sign", nil, "serial %q: want one made by NewSerial", hexSerial)
	}
	return s, nil
}

// randomSerial returns a positive 128-bit random serial number.
func randomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		if s := new(big.Int).SetBytes(b); s.Sign() > 0 {
			return s, nil
		}
	}
}

// serialHex is the inventory's serial form: lowercase hex, no leading zeros.
func serialHex(s *big.Int) string { return s.Text(16) }

// ParseSerial accepts a serial in hex (optionally with colons or a 0x
// prefix) and returns the inventory form.
func ParseSerial(s string) (string, error) {
	t := strings.ToLower(strings.TrimPrefix(strings.ReplaceAll(strings.TrimSpace(s), ":", ""), "0x"))
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || n.Sign() <= 0 || len(t) > 40 {
		return "", errf(KindBadRequest, "serial", nil, "%q is not a positive hex serial of at most 20 bytes", s)
	}
	return serialHex(n), nil
}

// subjectKeyID is SHA-1 of the subjectPublicKey bits (RFC 5280 4.2.1.2
// method 1), also Go's own choice for CA certificates.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	bits, err := publicKeyBits(spki)
	if err != nil {
		return nil, err
	}
	h := sha1.Sum(bits)
	return h[:], nil
}

// checkSubjectKey enforces the profile's key algorithms and sizes.
func (a *Authority) checkSubjectKey(p *profile, pub crypto.PublicKey) error {
	const op = "sign"
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if !p.keyAlgs["rsa"] {
			return errf(KindPolicyViolation, op, nil, "profile %q does not allow RSA keys", p.name)
		}
		if k.N.BitLen() < p.minRSA {
			return errf(KindPolicyViolation, op, nil, "RSA key is %d bits, profile %q requires at least %d", k.N.BitLen(), p.name, p.minRSA)
		}
		if k.N.BitLen() > 8192 {
			return errf(KindPolicyViolation, op, nil, "RSA key is %d bits, at most 8192 allowed", k.N.BitLen())
		}
		if k.E < 3 || k.E%2 == 0 {
			return errf(KindPolicyViolation, op, nil, "RSA public exponent %d is invalid", k.E)
		}
	case *ecdsa.PublicKey:
		if !p.keyAlgs["ecdsa"] {
			return errf(KindPolicyViolation, op, nil, "profile %q does not allow ECDSA keys", p.name)
		}
		curve := k.Curve.Params().Name
		if !p.curves[curve] {
			return errf(KindPolicyViolation, op, nil, "ECDSA curve %s not allowed by profile %q", curve, p.name)
		}
	case ed25519.PublicKey:
		if !p.keyAlgs["ed25519"] {
			return errf(KindPolicyViolation, op, nil, "profile %q does not allow Ed25519 keys", p.name)
		}
	default:
		return errf(KindPolicyViolation, op, nil, "unsupported public key type %T", pub)
	}
	if err := a.keys.check(pub); err != nil {
		return errf(KindPolicyViolation, op, err, "weak subject key")
	}
	return nil
}

// maxCommonName is ub-common-name (RFC 5280 appendix A).
const maxCommonName = 64

// commonNameFromSAN returns the DNS SAN the requested common name names,
// in the SAN's own form; ok is false when there is none.
func commonNameFromSAN(n Names) (string, bool) {
	cn := n.CommonName
	if cn == "" || len(cn) > maxCommonName {
		return "", false
	}
	for _, d := range n.DNSNames {
		if strings.EqualFold(d, cn) {
			return d, true
		}
	}
	// An IP address is not kept: zlint's reserved-IP lint reads the subject
	// too, and the private addresses servers here use would fail it.
	return "", false
}
