package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/zmap/zlint/v3/lint"
)

// assertLintClean fails on any zlint warning, error or fatal finding from
// the Authority's registry.
func assertLintClean(t *testing.T, a *Authority, what string, der []byte) {
	t.Helper()
	rs, err := a.lintResults(der)
	if err != nil {
		t.Fatal(err)
	}
	if f := lintFindings(rs, lint.Warn); len(f) > 0 {
		t.Errorf("%s: zlint findings: %v", what, f)
	}
}

func TestBuiltinProfilesLintClean(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	caCSR := func() []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: "Team Sub CA", Organization: []string{"Sigil Test"}, Country: []string{"US"}},
		}, mustKey(t, elliptic.P384()))
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	tests := []struct {
		profile string
		csr     []byte
		usage   x509.ExtKeyUsage
	}{
		{"server", csrFor(t, mustKey(t, elliptic.P256()), "www.example.test", []string{"www.example.test", "api.internal", "*.svc.cluster.local"}, []string{"10.1.2.3", "fd00::1", "127.0.0.1"}, nil, nil), x509.ExtKeyUsageServerAuth},
		{"server", csrFor(t, rsaKey, "", []string{"rsa.example.test"}, nil, nil, nil), x509.ExtKeyUsageServerAuth},
		{"client", csrFor(t, mustKey(t, elliptic.P256()), "alice", []string{"alice.internal"}, nil, []string{"urn:example:alice"}, []string{"alice@example.com"}), x509.ExtKeyUsageClientAuth},
		{"workload", csrFor(t, mustKey(t, elliptic.P256()), "", nil, nil, []string{"spiffe://example.org/ns/prod/sa/api"}, nil), x509.ExtKeyUsageServerAuth},
		{"intermediate", caCSR(), x509.ExtKeyUsageAny},
	}
	for _, tc := range tests {
		t.Run(tc.profile, func(t *testing.T) {
			var iss *Issued
			var err error
			if tc.profile == "intermediate" {
				// With every kind of permitted subtree, so each lints.
				iss, err = e.ca.SignIntermediate(ctx, SubCARequest{CSR: tc.csr, Requester: "test", Constraints: NameConstraints{
					DNS: []string{"payments.example.org"}, IPRanges: []string{"10.20.0.0/16", "fd00:20::/32"}, URIDomains: []string{"example.org"}}})
			} else {
				iss, err = e.ca.Sign(ctx, SignRequest{CSR: tc.csr, Profile: tc.profile, Requester: "test"})
			}
			if err != nil {
				t.Fatal(err)
			}
			assertLintClean(t, e.ca, tc.profile, iss.DER)
			if tc.profile != "intermediate" {
				verifyChain(t, e.ca, iss, tc.usage)
			}
			if iss.Record.Profile != tc.profile {
				t.Fatalf("record profile %q", iss.Record.Profile)
			}
		})
	}
	for _, in := range e.ca.Issuers() {
		assertLintClean(t, e.ca, in.Kind, in.Certificate.Raw)
	}
	// The two lints excluded for cost pass too, run once here in full.
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "full.example.test")})
	if err != nil {
		t.Fatal(err)
	}
	full, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeNames: []string{"e_ecdsa_small_private_key", "e_cert_issued_by_compromised_emudhra_ca"}})
	if err != nil {
		t.Fatal(err)
	}
	saved := e.ca.lintReg
	e.ca.lintReg = full
	rs, _ := e.ca.lintResults(iss.DER)
	e.ca.lintReg = saved
	if f := lintFindings(rs, lint.Warn); len(f) > 0 {
		t.Fatalf("costly lints: %v", f)
	}
}

func TestLintExclusionsExist(t *testing.T) {
	// Every documented exclusion names a lint zlint still has: a rename
	// would silently re-enable it (harmless) or leave a stale comment.
	known := map[string]bool{}
	for _, n := range lint.GlobalRegistry().Names() {
		known[n] = true
	}
	for n := range lintExclusions() {
		if !known[n] {
			t.Errorf("excluded lint %q is not registered in zlint", n)
		}
	}
}

func TestWorkloadSVID(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	id := "spiffe://example.org/ns/prod/sa/payments"
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: csrFor(t, mustKey(t, elliptic.P256()), "ignored-cn", nil, nil, []string{id}, nil), Profile: "workload"})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Certificate
	if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature || len(c.ExtKeyUsage) != 2 ||
		c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || c.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("SVID usages: ku=%v eku=%v ca=%v", c.KeyUsage, c.ExtKeyUsage, c.IsCA)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d != time.Hour+time.Minute {
		t.Fatalf("SVID validity %v, want 1h (+1m backdate)", d)
	}
	if c.Subject.CommonName != "" {
		t.Fatalf("SVID kept an unchecked common name %q", c.Subject.CommonName)
	}
	td := spiffeid.RequireTrustDomainFromString(testTrustDomain)
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{e.ca.Root()})
	got, _, err := x509svid.Verify(append([]*x509.Certificate{c}, iss.Chain[:len(iss.Chain)-1]...), bundle)
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if got.String() != id {
		t.Fatalf("SVID ID %s, want %s", got, id)
	}

	bad := []struct {
		name string
		uris []string
		dns  []string
		want string
	}{
		{"other trust domain", []string{"spiffe://evil.org/ns/prod"}, nil, "outside trust domain"},
		{"two IDs", []string{"spiffe://example.org/a", "spiffe://example.org/b"}, nil, "exactly one URI SAN"},
		{"no ID", nil, []string{"a.example.org"}, "exactly one URI SAN"},
		{"trust domain only", []string{"spiffe://example.org"}, nil, "has no path"},
		{"dot segment", []string{"spiffe://example.org/a/../b"}, nil, "not a valid SPIFFE ID"},
		{"uppercase trust domain", []string{"spiffe://EXAMPLE.org/a"}, nil, ""},
		{"query", []string{"spiffe://example.org/a?x=1"}, nil, "not a valid SPIFFE ID"},
		{"https URI", []string{"https://example.org/a"}, nil, "not a valid SPIFFE ID"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			n := countCerts(t, e.store)
			_, err := e.ca.Sign(ctx, SignRequest{CSR: csrFor(t, mustKey(t, elliptic.P256()), "", tc.dns, nil, tc.uris, nil), Profile: "workload"})
			if err == nil || KindOf(err) != KindPolicyViolation || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a policy violation mentioning %q", err, tc.want)
			}
			if countCerts(t, e.store) != n {
				t.Fatal("rejected request left a certificate in the inventory")
			}
		})
	}
}

func TestSignRejections(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.Profiles = map[string]ProfileConfig{
		"narrow": {
			KeyUsage: []string{"digital signature"}, ExtKeyUsage: []string{"server auth"},
			DNSPatterns: []string{"*.example.test"}, IPRanges: []string{"10.0.0.0/8"},
		},
	}
	e := newEnv(t, cfg, true)
	p256 := mustKey(t, elliptic.P256())
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	badSig := func() []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"a.example.test"}}, p256)
		if err != nil {
			t.Fatal(err)
		}
		// Flip the last bit of the signature's s: still parses, no longer
		// verifies.
		der[len(der)-1] ^= 0x01
		return der
	}()
	huge := bytes.Repeat([]byte("A"), 1<<20)
	denied := errors.New("grant covers only a.example.test")

	tests := []struct {
		name      string
		csr       []byte
		profile   string
		authorize func(Names) error
		kind      Kind
		want      string
	}{
		{"name outside profile", csrFor(t, p256, "", []string{"www.evil.com"}, nil, nil, nil), "narrow", nil, KindPolicyViolation, `DNS name "www.evil.com" is not allowed`},
		{"IP outside profile", csrFor(t, p256, "", []string{"a.example.test"}, []string{"192.168.1.1"}, nil, nil), "narrow", nil, KindPolicyViolation, "IP address 192.168.1.1 is not allowed"},
		{"email on server", csrFor(t, p256, "", []string{"a.example.test"}, nil, nil, []string{"x@example.test"}), "server", nil, KindPolicyViolation, `email address "x@example.test" is not allowed`},
		{"CN outside profile", csrFor(t, p256, "www.evil.com", []string{"a.example.test"}, nil, nil, nil), "narrow", nil, KindPolicyViolation, `common name "www.evil.com" is not allowed`},
		{"wildcard on narrow", csrFor(t, p256, "", []string{"*.example.test"}, nil, nil, nil), "narrow", nil, KindPolicyViolation, "wildcards are not allowed"},
		{"malformed DNS", csrFor(t, p256, "", []string{"bad_name.example.test"}, nil, nil, nil), "server", nil, KindPolicyViolation, "only letters, digits and hyphens"},
		{"no names", csrFor(t, p256, "", nil, nil, nil, nil), "server", nil, KindPolicyViolation, "no subject alternative name"},
		{"RSA 1024", csrFor(t, rsa1024, "", []string{"a.example.test"}, nil, nil, nil), "server", nil, KindPolicyViolation, "RSA key is 1024 bits"},
		{"P-224", csrFor(t, p224, "", []string{"a.example.test"}, nil, nil, nil), "server", nil, KindPolicyViolation, "ECDSA curve P-224 not allowed"},
		{"Ed25519 on server", csrFor(t, ed, "", []string{"a.example.test"}, nil, nil, nil), "server", nil, KindPolicyViolation, "does not allow Ed25519"},
		{"bad CSR signature", badSig, "server", nil, KindBadCSR, "CSR signature does not verify"},
		{"1 MB CSR", huge, "server", nil, KindBadCSR, "CSR is 1048576 bytes, the limit is 65536"},
		{"garbage", []byte("hello"), "server", nil, KindBadCSR, "neither PEM nor DER"},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0}}), "server", nil, KindBadCSR, `PEM block is "CERTIFICATE"`},
		{"unknown profile", csrFor(t, p256, "", []string{"a.example.test"}, nil, nil, nil), "nope", nil, KindNotFound, `unknown profile "nope"`},
		{"grant denied", csrFor(t, p256, "", []string{"a.example.test", "b.example.test"}, nil, nil, nil), "server",
			func(n Names) error {
				if len(n.DNSNames) != 2 {
					return errors.New("unexpected names")
				}
				return denied
			}, KindUnauthorized, "b.example.test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := countCerts(t, e.store)
			iss, err := e.ca.Sign(ctx, SignRequest{CSR: tc.csr, Profile: tc.profile, Authorize: tc.authorize})
			if err == nil || iss != nil {
				t.Fatal("accepted")
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Kind != tc.kind || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v (kind %s), want kind %s mentioning %q", err, KindOf(err), tc.kind, tc.want)
			}
			if countCerts(t, e.store) != n {
				t.Fatal("rejected request left a certificate in the inventory")
			}
		})
	}
	if _, err := e.ca.Sign(ctx, SignRequest{CSR: huge}); !errors.Is(err, ErrCSRTooLarge) {
		t.Fatalf("errors.Is(ErrCSRTooLarge): %v", err)
	}
	if _, err := e.ca.Sign(ctx, SignRequest{CSR: csrFor(t, p256, "", []string{"a.example.test"}, nil, nil, nil), Authorize: func(Names) error { return denied }}); !errors.Is(err, denied) {
		t.Fatalf("grant error not wrapped: %v", err)
	}
	// The narrow profile accepts what it allows; DER CSRs work too.
	der, _ := pem.Decode(csrFor(t, p256, "a.example.test", []string{"b.example.test"}, []string{"10.1.1.1"}, nil, nil))
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: der.Bytes, Profile: "narrow"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(iss.Certificate.DNSNames, ","); got != "b.example.test,a.example.test" {
		t.Fatalf("DNS names %s: the CN should be copied into the SANs", got)
	}
}

func TestLintBlocksIssuance(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	// A custom server profile longer than the BR maximum validity: zlint's
	// validity lint blocks it and the error names the lint.
	cfg.Profiles = map[string]ProfileConfig{
		"long": {KeyUsage: []string{"digital signature"}, ExtKeyUsage: []string{"server auth"}, DNSPatterns: []string{"*"}, DefaultTTL: 398 * 24 * time.Hour, MaxTTL: 398 * 24 * time.Hour},
	}
	e := newEnv(t, cfg, true)
	n := countCerts(t, e.store)
	_, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "a.example.test"), Profile: "long"})
	if KindOf(err) != KindLint || !strings.Contains(err.Error(), "e_server_cert_valid_time_longer_than") {
		t.Fatalf("got %v, want a lint error naming the validity lint", err)
	}
	if countCerts(t, e.store) != n {
		t.Fatal("linted-out certificate recorded")
	}
}

// A serial picked in advance (a lease records it before issuance) is the
// certificate's; malformed or reused ones are refused.
func TestPreChosenSerial(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	serial := NewSerial()
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "pre.example.test"), Serial: serial})
	if err != nil {
		t.Fatal(err)
	}
	if got := serialHex(iss.Certificate.SerialNumber); got != serial || iss.Record.Serial != serial {
		t.Fatalf("certificate serial %s, record %s, want %s", got, iss.Record.Serial, serial)
	}
	for name, s := range map[string]string{
		"reused":   serial,
		"short":    "1234",
		"not hex":  "zz" + serial[2:],
		"negative": "-" + serial,
		"too long": strings.Repeat("7f", 21),
	} {
		if _, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "pre.example.test"), Serial: s}); err == nil {
			t.Errorf("%s serial %q accepted", name, s)
		}
	}
}

// TestSignChecked: a CSR checked once (CheckCSR) is signed as is, its
// bytes not read again; CheckCSR refuses what ParseCSR refuses; a
// CheckedCSR made elsewhere is refused, not trusted.
func TestSignChecked(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	checked, err := CheckCSR(serverCSR(t, "checked.example.test"))
	if err != nil {
		t.Fatal(err)
	}
	if got := checked.Request().DNSNames; len(got) != 1 || got[0] != "checked.example.test" {
		t.Fatalf("Request: %v", got)
	}
	iss, err := e.ca.Sign(ctx, SignRequest{Checked: checked, CSR: []byte("not read"), Requester: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	if got := iss.Certificate.DNSNames; len(got) != 1 || got[0] != "checked.example.test" {
		t.Fatalf("signed names %v", got)
	}
	b, _ := pem.Decode(serverCSR(t, "bad.example.test"))
	bad := b.Bytes
	bad[len(bad)-1] ^= 1 // the signature's last byte
	if _, err := CheckCSR(bad); KindOf(err) != KindBadCSR || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("CheckCSR of a CSR with a broken signature: %v", err)
	}
	if _, err := e.ca.Sign(ctx, SignRequest{Checked: &CheckedCSR{}, Requester: "tester"}); KindOf(err) != KindBadCSR {
		t.Fatalf("Sign with a CheckedCSR not made by CheckCSR: %v", err)
	}
}
