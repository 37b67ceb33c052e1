package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"sync"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
	"github.com/zmap/zlint/v3/util"
)

// lintExclusions returns the zlint lints not run before issuance, each
// with why. Everything else zlint registers runs, and any error or fatal
// result blocks issuance. Exclusions are by name (never by whole source) so
// a new zlint release's lints run by default.
func lintExclusions() map[string]string {
	return map[string]string{
		// Cost: these two do elliptic-curve scalar multiplications, ~16 ms each
		// per certificate, 30x the rest of zlint together.
		//
		// The eMudhra lint checks whether the signature on the linted
		// certificate verifies under one of eight compromised eMudhra CA keys.
		// Before issuance the linted certificate is signed with a throwaway
		// key, so the lint could never fire here; what it protects against (a
		// compromised issuing key) is checked once per issuer instead:
		// checkNotCompromised runs when an external chain is imported, and our
		// own issuer keys are generated fresh in custody.
		"e_cert_issued_by_compromised_emudhra_ca": "costly; issuer keys checked once at import (checkNotCompromised)",
		// The small-private-key lint looks for ECDSA subject keys whose private
		// scalar is tiny (|d| <= 2^16). keyChecker performs the same search with
		// a precomputed table once per distinct subject key and caches the
		// verdict (renewals reuse keys), in microseconds instead of ~16 ms.
		"e_ecdsa_small_private_key": "costly; same check done by keyChecker with a cached verdict per key",

		// Private-CA inapplicable lints. Sigil is a private CA: its
		// certificates name internal hosts and workloads and are never meant for
		// the Web PKI, so CA/Browser-Forum-only requirements that a private
		// deployment necessarily violates are excluded. Each exclusion below was
		// observed to fire on a correct private-CA certificate; RFC 5280 lints
		// and the BR rules that still make sense privately (key sizes, subject
		// O/C on CA certificates, validity, encoding) all stay on.
		//
		// BR 7.1.2.7.12 allows only DNS and IP SANs; an X.509-SVID must carry
		// exactly one spiffe:// URI SAN (SPIFFE X.509-SVID spec 2).
		"e_ext_san_uniform_resource_identifier_present": "Web PKI only; SVIDs require a URI SAN",
		// Internal names (".internal", ".cluster.local", ".corp") are the point
		// of a private CA; IANA's root zone does not apply.
		"e_dnsname_not_valid_tld": "Web PKI only; private CAs certify internal names",
		// RFC 1918 / unique-local / loopback addresses are the normal case
		// inside a private network.
		"e_ext_san_contains_reserved_ip": "Web PKI only; private networks use reserved addresses",
		// For the same reason a subordinate CA's permitted IP subtrees are
		// private ranges (10.20.0.0/16, fd00::/8).
		"e_ext_nc_intersects_reserved_ip": "Web PKI only; sub-CAs are constrained to private networks",
		// The PublicURL serving CRLs/OCSP/AIA is typically an internal host.
		"w_sub_cert_aia_contains_internal_names": "Web PKI only; the CA's URLs are internal",
		// BR certificates must assert a CA/B Forum policy OID (and subordinate
		// CAs a policy); a private CA has no such policy, and asserting the
		// CA/B OIDs would falsely claim Baseline Requirements compliance.
		"e_sub_cert_certificate_policies_missing": "Web PKI only; no CA/B Forum policy applies",
		"e_sub_cert_cert_policy_empty":            "Web PKI only; no CA/B Forum policy applies",
		"e_sub_ca_certificate_policies_missing":   "Web PKI only; no CA/B Forum policy applies",
		"e_invalid_ca_certificate_policies":       "Web PKI only; no CA/B Forum policy applies",
		// BR 7.1.2.7.6 (2023) discourages subscriber SKIs, but RFC 5280
		// 4.2.1.2 says end-entity certificates SHOULD carry one and Sigil's
		// inventory and clients use it to match keys.
		"w_ext_subject_key_identifier_not_recommended_subscriber": "RFC 5280 recommends SKI; BR-only discouragement",
		// The BRs deprecate the subject CN; the server profile keeps the
		// requested one only when it is also a SAN (what the BRs still
		// allow, and what users of step-ca and OpenSSL expect to see).
		"w_subject_common_name_included": "BR-only discouragement; the CN kept is always one of the SANs",
	}
}

// newLintRegistry builds the filtered zlint registry once per Authority.
func newLintRegistry() (lint.Registry, error) {
	global := lint.GlobalRegistry()
	known := map[string]bool{}
	for _, n := range global.Names() {
		known[n] = true
	}
	var exclude []string
	for n := range lintExclusions() {
		// Filter rejects unknown names; a lint renamed or dropped by a zlint
		// upgrade needs no exclusion.
		if known[n] {
			exclude = append(exclude, n)
		}
	}
	sort.Strings(exclude)
	reg, err := global.Filter(lint.FilterOptions{ExcludeNames: exclude})
	if err != nil {
		return nil, err
	}
	return &namesCached{Registry: reg, names: reg.Names()}, nil
}

// namesCached memoises Names: zlint calls it once per linted certificate
// (only for its length) and the registry rebuilds and sorts ~430 names each
// time, about a fifth of zlint's cost per certificate here.
type namesCached struct {
	lint.Registry
	names []string
}

func (r *namesCached) Names() []string { return append([]string(nil), r.names...) }

// lint builds tmpl's to-be-signed certificate and runs zlint on it,
// wrapped as a certificate with the issuer's signature algorithm and a
// placeholder signature. It returns that certificate's DER: issue signs
// exactly its TBSCertificate with the real key (signTBS), so the bytes
// linted are the bytes signed, and the real key signs only after lint
// passed. Error and fatal findings block issuance; warnings are reported
// too, because every built-in profile is expected to be warning-free (a
// warning means a misconfigured profile).
//
// The TBS comes from encodeTBS (no signature at all) when the template is
// one it handles, else from x509.CreateCertificate with a throwaway key of
// the issuer's key type. Either way the certificate zlint sees names the
// algorithm the real key will use, in the TBS and outside it, and carries a
// signature of that algorithm's shape (lints look at its length), made by
// the throwaway key: over this TBS on the fallback path, over another one
// (lintShape's sample) on the fast path. No lint that runs verifies the
// signature (the one that did, the eMudhra lint, is excluded above).
func (a *Authority) lint(tmpl, parent *x509.Certificate, pub, issuerPub crypto.PublicKey) ([]byte, error) {
	const op = "sign"
	shape, err := a.lintShape(issuerPub)
	if err != nil {
		return nil, errf(KindInternal, op, err, "lint key")
	}
	var der []byte
	tbs, err := encodeTBS(tmpl, parent, pub, shape.alg)
	switch {
	case err == nil:
		der, err = asn1.Marshal(signedCert{
			TBS:       asn1.RawValue{FullBytes: tbs},
			Algorithm: asn1.RawValue{FullBytes: shape.alg},
			Signature: asn1.BitString{Bytes: shape.sig, BitLength: 8 * len(shape.sig)},
		})
		if err != nil {
			return nil, errf(KindInternal, op, err, "lint certificate")
		}
	case errors.Is(err, errTBSUnsupported):
		// Same issuer name and key identifier, throwaway key: the
		// to-be-signed part is what the real signature will cover.
		fake := *parent
		fake.PublicKey = shape.key.Public()
		der, err = x509.CreateCertificate(rand.Reader, tmpl, &fake, pub, shape.key)
		if err != nil {
			return nil, errf(KindPolicyViolation, op, err, "building the certificate")
		}
	default:
		return nil, errf(KindPolicyViolation, op, err, "building the certificate")
	}
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, errf(KindInternal, op, err, "lint parse")
	}
	errs, warns := a.linter.run(zc)
	if len(errs) > 0 {
		return nil, errf(KindLint, op, nil, "pre-issuance lint failed: %s", strings.Join(errs, "; "))
	}
	if len(warns) > 0 {
		// A warning on a built-in profile would be a bug; on a custom
		// profile the operator should see it.
		a.log.Warn("ca: pre-issuance lint warnings", "lints", warns)
	}
	return der, nil
}

// signedCert is the outer SEQUENCE of an X.509 certificate (RFC 5280
// 4.1), with the TBSCertificate and AlgorithmIdentifier kept as encoded.
type signedCert struct {
	TBS       asn1.RawValue
	Algorithm asn1.RawValue
	Signature asn1.BitString
}

// signTBS signs the TBSCertificate of lintDER (from lint) with the issuer's
// signer and returns the certificate: lintDER with its throwaway signature
// replaced by the real one. It is what x509.CreateCertificate would do with
// the same template, minus building the TBS a second time (and the TBS is
// byte for byte the one zlint saw). Like CreateCertificate it checks the
// new signature under parent's key, so a faulty signer (an RSA-CRT fault
// would leak the key) never yields a certificate.
func signTBS(lintDER []byte, parent *x509.Certificate, signer crypto.Signer) ([]byte, *x509.Certificate, error) {
	var c signedCert
	rest, err := asn1.Unmarshal(lintDER, &c)
	if err != nil {
		return nil, nil, fmt.Errorf("lint certificate: %w", err)
	}
	if len(rest) > 0 {
		return nil, nil, errors.New("lint certificate: trailing data")
	}
	hash, opts, err := signingHash(signer.Public())
	if err != nil {
		return nil, nil, err
	}
	signed := c.TBS.FullBytes
	if hash != 0 {
		h := hash.New()
		h.Write(signed)
		signed = h.Sum(nil)
	}
	sig, err := signer.Sign(rand.Reader, signed, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("signing: %w", err)
	}
	c.Signature = asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}
	der, err := asn1.Marshal(c)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the signed certificate: %w", err)
	}
	if err := parent.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		return nil, nil, fmt.Errorf("the signer's signature does not verify: %w", err)
	}
	return der, cert, nil
}

// signingHash is the digest x509.CreateCertificate uses for an issuer key
// when the template names no signature algorithm (none of ours does): the
// throwaway key is of the same type and size, so the TBS already names
// this algorithm, and CheckSignature in signTBS would catch a mismatch.
func signingHash(pub crypto.PublicKey) (crypto.Hash, crypto.SignerOpts, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return crypto.SHA256, crypto.SHA256, nil
	case *ecdsa.PublicKey:
		switch k.Curve.Params().BitSize {
		case 256:
			return crypto.SHA256, crypto.SHA256, nil
		case 384:
			return crypto.SHA384, crypto.SHA384, nil
		case 521:
			return crypto.SHA512, crypto.SHA512, nil
		}
		return 0, nil, fmt.Errorf("issuer ECDSA curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return 0, crypto.Hash(0), nil
	}
	return 0, nil, fmt.Errorf("issuer key type %T", pub)
}

// linter runs a zlint registry's certificate lints the way
// zlint.LintCertificateEx does (framework filter, CheckApplies,
// CheckEffective, Execute, a panic is fatal) with two costs removed: zlint
// constructs and configures every lint (~430) again for each certificate,
// some compiling regular expressions, and fills a result map of every lint.
// Here each goroutine takes a set of lint instances built once from a pool
// (so no instance is ever shared between concurrent runs) and only findings
// are collected.
type linter struct {
	lints []*lint.CertificateLint
	cfg   lint.Configuration
	sets  sync.Pool // of *[]lint.LintInterface, parallel to lints
}

func newLinter(reg lint.Registry) *linter {
	l := &linter{lints: reg.CertificateLints().Lints(), cfg: reg.GetConfiguration()}
	l.sets.New = func() any {
		set := make([]lint.LintInterface, len(l.lints))
		for i, cl := range l.lints {
			inst := cl.Lint()
			if err := l.cfg.MaybeConfigure(inst, cl.Name); err != nil {
				// run reports it as a fatal finding, as zlint does.
				inst = nil
			}
			set[i] = inst
		}
		return &set
	}
	return l
}

// run lints c and returns the error and fatal findings, then the warnings,
// each "name (details)", sorted.
func (l *linter) run(c *zx509.Certificate) (errs, warns []string) {
	set := l.sets.Get().(*[]lint.LintInterface)
	defer l.sets.Put(set)
	for i, cl := range l.lints {
		r := l.one(cl, (*set)[i], c)
		if r == nil || r.Status < lint.Warn {
			continue
		}
		s := cl.Name
		if r.Details != "" {
			s += " (" + r.Details + ")"
		}
		if r.Status == lint.Warn {
			warns = append(warns, s)
		} else {
			errs = append(errs, s)
		}
	}
	sort.Strings(errs)
	sort.Strings(warns)
	return errs, warns
}

// one is lint.CertificateLint.Execute on a prepared instance.
func (l *linter) one(cl *lint.CertificateLint, inst lint.LintInterface, c *zx509.Certificate) (res *lint.LintResult) {
	defer func() {
		if err := recover(); err != nil {
			res = &lint.LintResult{Status: lint.Fatal, Details: fmt.Sprintf("'%s' panicked. Error: %v", cl.Name, err)}
		}
	}()
	if !cl.OverrideFrameworkFilter {
		switch {
		case cl.Source == lint.CABFBaselineRequirements && !util.IsServerAuthCert(c),
			cl.Source == lint.CABFSMIMEBaselineRequirements && !util.IsEmailProtectionCert(c),
			cl.Source == lint.CABFCSBaselineRequirements && !util.IsCodeSigning(c.PolicyIdentifiers):
			return nil
		}
	}
	if inst == nil {
		return &lint.LintResult{Status: lint.Fatal, Details: "lint configuration failed"}
	}
	if !inst.CheckApplies(c) || !cl.CheckEffective(c) {
		return nil
	}
	return inst.Execute(c)
}

// lintFindings lists the lints at or above level, with details, sorted.
func lintFindings(rs *zlint.ResultSet, level lint.LintStatus) []string {
	var found []string
	for name, r := range rs.Results {
		if r.Status >= level {
			s := name
			if r.Details != "" {
				s += " (" + r.Details + ")"
			}
			found = append(found, s)
		}
	}
	sort.Strings(found)
	return found
}

// lintResults runs the Authority's lint registry on a certificate (tests
// and diagnostics).
func (a *Authority) lintResults(der []byte) (*zlint.ResultSet, error) {
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return zlint.LintCertificateEx(zc, a.lintReg), nil
}

// lintShape is what lint needs for an issuer key type: a throwaway key of
// that type and size, the AlgorithmIdentifier x509.CreateCertificate
// writes for it, and a sample signature by it.
type lintShape struct {
	key crypto.Signer
	alg []byte // encoded AlgorithmIdentifier
	sig []byte // a signature by key, over another TBS
}

// lintShape returns the cached lintShape of issuerPub's key type. The
// algorithm and the sample signature come from a certificate
// x509.CreateCertificate signs with the throwaway key, once.
func (a *Authority) lintShape(issuerPub crypto.PublicKey) (*lintShape, error) {
	var kind string
	var gen func() (crypto.Signer, error)
	switch k := issuerPub.(type) {
	case *ecdsa.PublicKey:
		kind = "ecdsa-" + k.Curve.Params().Name
		curve := k.Curve
		gen = func() (crypto.Signer, error) { return ecdsa.GenerateKey(curve, rand.Reader) }
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		kind = fmt.Sprintf("rsa-%d", bits)
		gen = func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, bits) }
	case ed25519.PublicKey:
		kind = "ed25519"
		gen = func() (crypto.Signer, error) {
			_, priv, err := ed25519.GenerateKey(rand.Reader)
			return priv, err
		}
	default:
		return nil, fmt.Errorf("issuer key type %T", issuerPub)
	}
	a.lintMu.Lock()
	defer a.lintMu.Unlock()
	if s, ok := a.lintKeys[kind]; ok {
		return s, nil
	}
	key, err := gen()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	var c signedCert
	if _, err := asn1.Unmarshal(der, &c); err != nil {
		return nil, err
	}
	s := &lintShape{key: key, alg: c.Algorithm.FullBytes, sig: c.Signature.Bytes}
	a.lintKeys[kind] = s
	return s, nil
}
