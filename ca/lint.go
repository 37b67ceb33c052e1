package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"sort"
	"strings"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
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

// lint signs tmpl with a throwaway key of the issuer's key type and runs
// zlint on the result. Error and fatal findings block issuance; warnings
// are reported too, because every built-in profile is expected to be
// warning-free (a warning means a misconfigured profile).
func (a *Authority) lint(tmpl, parent *x509.Certificate, pub, issuerPub crypto.PublicKey) error {
	const op = "sign"
	throwaway, err := a.lintKey(issuerPub)
	if err != nil {
		return errf(KindInternal, op, err, "lint key")
	}
	// Same issuer name and key identifier, throwaway key: the to-be-signed
	// part is what the real signature will cover.
	fake := *parent
	fake.PublicKey = throwaway.Public()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, &fake, pub, throwaway)
	if err != nil {
		return errf(KindPolicyViolation, op, err, "building the certificate")
	}
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		return errf(KindInternal, op, err, "lint parse")
	}
	rs := zlint.LintCertificateEx(zc, a.lintReg)
	if !rs.ErrorsPresent && !rs.FatalsPresent {
		if rs.WarningsPresent {
			// A warning on a built-in profile would be a bug; on a custom
			// profile the operator should see it.
			a.log.Warn("ca: pre-issuance lint warnings", "lints", lintFindings(rs, lint.Warn))
		}
		return nil
	}
	return errf(KindLint, op, nil, "pre-issuance lint failed: %s", strings.Join(lintFindings(rs, lint.Error), "; "))
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

// lintKey returns a cached throwaway key of the same algorithm (and size)
// as the issuer key, so the lint certificate's signature algorithm matches
// the real one.
func (a *Authority) lintKey(issuerPub crypto.PublicKey) (crypto.Signer, error) {
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
	s, err := gen()
	if err != nil {
		return nil, err
	}
	a.lintKeys[kind] = s
	return s, nil
}
