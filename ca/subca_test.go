package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/storage"
)

// subCACSR is a CSR a caller would send for a subordinate CA (zlint wants a
// CN, O and C on CA certificates), with its key.
func subCACSR(t *testing.T) ([]byte, crypto.Signer) {
	t.Helper()
	key := mustKey(t, elliptic.P256())
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "ca.payments.example.org", Organization: []string{"Payments"}, Country: []string{"US"}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// Security review #1: the built-in intermediate profile (and any CA profile
// an operator configures) must not be reachable through Sign, whatever the
// caller's grants.
func TestSignRefusesCAProfiles(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.Profiles = map[string]ProfileConfig{"team-ca": {
		KeyUsage: []string{"cert sign", "crl sign", "digital signature"}, IsCA: true, CommonNamePatterns: []string{"*"}, CopySubject: true,
	}}
	e := newEnv(t, cfg, true)
	before := countCerts(t, e.store)
	for _, profile := range []string{"intermediate", "team-ca"} {
		t.Run(profile, func(t *testing.T) {
			csr, _ := subCACSR(t)
			authorized := false
			_, err := e.ca.Sign(ctx, SignRequest{CSR: csr, Profile: profile, Requester: "attacker",
				Authorize: func(Names) error { authorized = true; return nil }})
			if KindOf(err) != KindForbidden || !errors.Is(err, ErrCAProfile) {
				t.Fatalf("Sign with CA profile %q: got %v, want KindForbidden/ErrCAProfile", profile, err)
			}
			if !strings.Contains(err.Error(), "sign-intermediate") {
				t.Errorf("error does not say which operation to use: %v", err)
			}
			if authorized {
				t.Error("the grant check ran: the refusal must come before any name is considered")
			}
		})
	}
	if n := countCerts(t, e.store); n != before {
		t.Fatalf("inventory grew from %d to %d", before, n)
	}
}

// signLeaf signs a leaf with a subordinate CA's key, as the holder of a
// sub-CA would, outside Sigil.
func signLeaf(t *testing.T, sub *x509.Certificate, subKey crypto.Signer, dns []string, ips []string, uris []string) *x509.Certificate {
	t.Helper()
	key := mustKey(t, elliptic.P256())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames: dns,
	}
	for _, s := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(s))
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, sub, key.Public(), subKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSignIntermediateNameConstraints(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	type leaf struct {
		dns, ips, uris []string
		ok             bool
	}
	tests := []struct {
		name   string
		nc     NameConstraints
		leaves []leaf
	}{
		{"dns only", NameConstraints{DNS: []string{"payments.example.org"}}, []leaf{
			{dns: []string{"api.payments.example.org"}, ok: true},
			{dns: []string{"payments.example.org"}, ok: true},
			{dns: []string{"bank.internal.example.com"}},
			{dns: []string{"api.payments.example.org", "evil.example.com"}},
			// Name forms not permitted are excluded entirely.
			{dns: []string{"api.payments.example.org"}, ips: []string{"10.0.0.1"}},
			{dns: []string{"api.payments.example.org"}, uris: []string{"spiffe://example.org/ns/admin/sa/ops"}},
		}},
		{"all forms", NameConstraints{DNS: []string{".svc.example.org"}, IPRanges: []string{"10.20.0.0/16"}, URIDomains: []string{"example.org"}}, []leaf{
			{dns: []string{"db.svc.example.org"}, ips: []string{"10.20.3.4"}, ok: true},
			{uris: []string{"spiffe://example.org/ns/payments/sa/api"}, ok: true},
			{dns: []string{"svc.example.org"}}, // leading dot: subdomains only
			{ips: []string{"10.21.0.1"}},
			{uris: []string{"spiffe://other.example/ns/admin"}},
		}},
		{"ip only", NameConstraints{IPRanges: []string{"fd00:20::/32"}}, []leaf{
			{ips: []string{"fd00:20::1"}, ok: true},
			{ips: []string{"fd00:21::1"}},
			{dns: []string{"anything.example.org"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			csr, subKey := subCACSR(t)
			iss, err := e.ca.SignIntermediate(ctx, SubCARequest{CSR: csr, Requester: "admin", Constraints: tc.nc})
			if err != nil {
				t.Fatal(err)
			}
			sub := iss.Certificate
			if !sub.IsCA || !sub.PermittedDNSDomainsCritical {
				t.Fatalf("IsCA %v, name constraints critical %v", sub.IsCA, sub.PermittedDNSDomainsCritical)
			}
			assertLintClean(t, e.ca, tc.name, iss.DER)
			if !bytes.Equal(iss.Chain[0].Raw, e.ca.Root().Raw) {
				t.Fatal("a subordinate CA is signed by the root")
			}
			roots := x509.NewCertPool()
			roots.AddCert(e.ca.Root())
			mids := x509.NewCertPool()
			mids.AddCert(sub)
			for i, l := range tc.leaves {
				c := signLeaf(t, sub, subKey, l.dns, l.ips, l.uris)
				_, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: mids, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
				var cie x509.CertificateInvalidError
				switch {
				case l.ok && err != nil:
					t.Errorf("leaf %d %v%v%v inside the permitted subtrees: %v", i, l.dns, l.ips, l.uris, err)
				case !l.ok && err == nil:
					t.Errorf("leaf %d %v%v%v outside the permitted subtrees verified", i, l.dns, l.ips, l.uris)
				case !l.ok && (!errors.As(err, &cie) || cie.Reason != x509.CANotAuthorizedForThisName):
					t.Errorf("leaf %d: want CANotAuthorizedForThisName, got %v", i, err)
				}
			}
		})
	}
}

func TestSignIntermediateRejections(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	before := countCerts(t, e.store)
	tests := []struct {
		name     string
		profile  string
		nc       NameConstraints
		want     string
		sentinel error
	}{
		{"no constraints", "", NameConstraints{}, "at least one permitted subtree", ErrNoNameConstraints},
		{"leaf profile", "server", NameConstraints{DNS: []string{"example.org"}}, "does not issue CA certificates", nil},
		{"unknown profile", "nope", NameConstraints{DNS: []string{"example.org"}}, "unknown profile", nil},
		{"wildcard dns", "", NameConstraints{DNS: []string{"*.example.org"}}, "permitted DNS domain", nil},
		{"empty dns", "", NameConstraints{DNS: []string{""}}, "permitted DNS domain", nil},
		{"bad cidr", "", NameConstraints{IPRanges: []string{"10.0.0.1"}}, "want a CIDR", nil},
		{"host bits", "", NameConstraints{IPRanges: []string{"10.0.0.1/8"}}, "host bits", nil},
		{"every address", "", NameConstraints{IPRanges: []string{"0.0.0.0/0"}}, "permits every address", nil},
		{"uri with scheme", "", NameConstraints{URIDomains: []string{"spiffe://example.org"}}, "permitted URI domain", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			csr, _ := subCACSR(t)
			_, err := e.ca.SignIntermediate(ctx, SubCARequest{CSR: csr, Profile: tc.profile, Constraints: tc.nc})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if k := KindOf(err); k != KindBadRequest && k != KindNotFound {
				t.Errorf("kind %s, want bad_request or not_found", k)
			}
			if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
				t.Errorf("not %v: %v", tc.sentinel, err)
			}
		})
	}
	if n := countCerts(t, e.store); n != before {
		t.Fatalf("inventory grew from %d to %d", before, n)
	}
}

// activeIntermediate returns the active intermediate's info.
func activeIntermediate(t *testing.T, a *Authority) IssuerInfo {
	t.Helper()
	for _, in := range a.Issuers() {
		if in.Active && in.Kind == KindIntermediate {
			return in
		}
	}
	t.Fatal("no active intermediate")
	return IssuerInfo{}
}

// Security review #3: Revoke (the ca/revoke path) must not revoke CA
// certificates, Sigil's own or a caller's sub-CA.
func TestRevokeRefusesIssuerCertificates(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	csr, _ := subCACSR(t)
	sub, err := e.ca.SignIntermediate(ctx, SubCARequest{CSR: csr, Constraints: NameConstraints{DNS: []string{"payments.example.org"}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, serial := range map[string]string{
		"active intermediate": serialHex(activeIntermediate(t, e.ca).Certificate.SerialNumber),
		"caller's sub-CA":     sub.Record.Serial,
	} {
		t.Run(name, func(t *testing.T) {
			err := e.ca.Revoke(ctx, serial, ReasonKeyCompromise)
			if KindOf(err) != KindForbidden || !errors.Is(err, ErrIssuerCertificate) {
				t.Fatalf("got %v, want KindForbidden/ErrIssuerCertificate", err)
			}
			for _, w := range []string{"issuer (CA) certificate", "sigil ca intermediate revoke"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			rec, err := e.ca.Get(ctx, serial)
			if err != nil || rec.Status != storage.CertValid {
				t.Fatalf("after the refused revocation: %v %v", rec, err)
			}
		})
	}
	// Leaves are still revocable.
	leaf, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "leaf.example.test")})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ca.Revoke(ctx, leaf.Record.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
}

// refusals records Config.IssuanceRefused calls.
type refusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[reason]++
}

func (r *refusals) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// refusalEnv is a CA with a settable clock, a refusal counter and a log.
func refusalEnv(t *testing.T, intTTL time.Duration) (*testEnv, *testClock, *refusals, *syncBuffer) {
	t.Helper()
	clk := &testClock{t: time.Now()}
	ref := &refusals{n: map[string]int{}}
	logs := &syncBuffer{}
	cfg := testConfig()
	cfg.Now = clk.Now
	cfg.IssuanceRefused = ref.add
	e := newEnv(t, cfg, false)
	a, err := New(e.custody, e.store, cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.ca = a
	if err := a.InitHierarchy(context.Background(), InitRequest{CommonName: "Sigil Test Root", Organization: "Sigil Test", Country: "US", IntermediateTTL: intTTL}); err != nil {
		t.Fatal(err)
	}
	return e, clk, ref, logs
}

func TestRevokeIssuer(t *testing.T) {
	ctx := context.Background()
	e, _, ref, logs := refusalEnv(t, 0)
	old := activeIntermediate(t, e.ca)
	oldSerial := serialHex(old.Certificate.SerialNumber)
	var rootID string
	for _, in := range e.ca.Issuers() {
		if in.Kind == KindRoot {
			rootID = in.ID
		}
	}
	leaf, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "leaf.example.test")})
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := subCACSR(t)
	sub, err := e.ca.SignIntermediate(ctx, SubCARequest{CSR: csr, Constraints: NameConstraints{DNS: []string{"payments.example.org"}}})
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		req  RevokeIssuerRequest
		kind Kind
		want string
	}{
		{"neither", RevokeIssuerRequest{}, KindBadRequest, "exactly one"},
		{"both", RevokeIssuerRequest{IssuerID: old.ID, Serial: oldSerial}, KindBadRequest, "exactly one"},
		{"root", RevokeIssuerRequest{IssuerID: rootID}, KindBadRequest, "is a root"},
		{"leaf", RevokeIssuerRequest{Serial: leaf.Record.Serial}, KindBadRequest, "not a CA certificate"},
		{"unknown issuer", RevokeIssuerRequest{IssuerID: "abc"}, KindNotFound, "no issuer"},
		{"active without rotate", RevokeIssuerRequest{IssuerID: old.ID, Reason: ReasonKeyCompromise}, KindConflict, "--rotate"},
		{"active by serial without rotate", RevokeIssuerRequest{Serial: oldSerial}, KindConflict, "--rotate"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.ca.RevokeIssuer(ctx, tc.req)
			if KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v (%s), want %s containing %q", err, KindOf(err), tc.kind, tc.want)
			}
		})
	}
	if rec, _ := e.ca.Get(ctx, oldSerial); rec.Status != storage.CertValid {
		t.Fatal("a refused request revoked the intermediate")
	}

	// A caller's sub-CA, by serial.
	if res, err := e.ca.RevokeIssuer(ctx, RevokeIssuerRequest{Serial: sub.Record.Serial, Reason: ReasonCACompromise}); err != nil || res.IssuerID != "" {
		t.Fatalf("revoking a sub-CA: %+v %v", res, err)
	}
	// The active intermediate, with rotation.
	res, err := e.ca.RevokeIssuer(ctx, RevokeIssuerRequest{IssuerID: old.ID, Reason: ReasonKeyCompromise, Rotate: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.NewIssuer == nil || res.NewIssuer.ID == old.ID || !res.NewIssuer.Active || res.Serial != oldSerial {
		t.Fatalf("result %+v", res)
	}
	if _, err := e.ca.RevokeIssuer(ctx, RevokeIssuerRequest{IssuerID: old.ID, Rotate: true}); KindOf(err) != KindConflict {
		t.Fatalf("second revocation: %v", err)
	}
	// Both on the root's CRL.
	der, err := e.ca.CRL(ctx, rootID, 0)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	onCRL := map[string]bool{}
	for _, ent := range crl.RevokedCertificateEntries {
		onCRL[serialHex(ent.SerialNumber)] = true
	}
	if !onCRL[oldSerial] || !onCRL[sub.Record.Serial] {
		t.Fatalf("root CRL %v lacks %s or %s", onCRL, oldSerial, sub.Record.Serial)
	}
	// Issuance continues from the new intermediate.
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "after.example.test")})
	if err != nil {
		t.Fatal(err)
	}
	if iss.Record.IssuerID != res.NewIssuer.ID {
		t.Fatalf("issued by %s, want the new intermediate %s", iss.Record.IssuerID, res.NewIssuer.ID)
	}
	if ref.get("issuer_revoked") != 0 || strings.Contains(logs.String(), "issuance refused") {
		t.Fatal("a refusal was recorded though none happened")
	}
}

// Security review #3: nothing is issued from a revoked or expired issuer,
// whichever path revoked it, and each refusal is logged and counted.
func TestNoIssuanceFromUnusableIssuer(t *testing.T) {
	ctx := context.Background()
	t.Run("revoked with force", func(t *testing.T) {
		e, _, ref, logs := refusalEnv(t, 0)
		if _, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "before.example.test")}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.ca.RevokeIssuer(ctx, RevokeIssuerRequest{IssuerID: activeIntermediate(t, e.ca).ID, Reason: ReasonKeyCompromise, Force: true}); err != nil {
			t.Fatal(err)
		}
		assertRefused(t, e, ErrIssuerRevoked, "is revoked")
		if ref.get("issuer_revoked") != 1 {
			t.Fatalf("refusals counted: %v", ref.n)
		}
		if !strings.Contains(logs.String(), "level=ERROR msg=\"ca: issuance refused\" reason=issuer_revoked") {
			t.Fatalf("no error-level log of the refusal:\n%s", logs.String())
		}
		// A restart remembers it (from the inventory).
		e.ca = e.reopen(t)
		assertRefused(t, e, ErrIssuerRevoked, "is revoked")
	})
	t.Run("revoked by another instance", func(t *testing.T) {
		e, clk, ref, _ := refusalEnv(t, 0)
		if _, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "before.example.test")}); err != nil {
			t.Fatal(err)
		}
		other := e.reopen(t)
		if _, err := other.RevokeIssuer(ctx, RevokeIssuerRequest{IssuerID: activeIntermediate(t, other).ID, Force: true}); err != nil {
			t.Fatal(err)
		}
		clk.Add(issuerRecheck + time.Second)
		assertRefused(t, e, ErrIssuerRevoked, "is revoked")
		if ref.get("issuer_revoked") != 1 {
			t.Fatalf("refusals counted: %v", ref.n)
		}
	})
	t.Run("expired", func(t *testing.T) {
		e, clk, ref, logs := refusalEnv(t, 2*time.Hour)
		if _, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "before.example.test")}); err != nil {
			t.Fatal(err)
		}
		clk.Add(3 * time.Hour)
		assertRefused(t, e, ErrIssuerExpired, "expired at")
		if ref.get("issuer_expired") != 1 {
			t.Fatalf("refusals counted: %v", ref.n)
		}
		if !strings.Contains(logs.String(), "reason=issuer_expired") {
			t.Fatalf("no log of the refusal:\n%s", logs.String())
		}
		// A new intermediate restores issuance.
		if _, err := e.ca.RotateIntermediate(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "after.example.test")}); err != nil {
			t.Fatal(err)
		}
	})
}

func assertRefused(t *testing.T, e *testEnv, sentinel error, want string) {
	t.Helper()
	before := countCerts(t, e.store)
	_, err := e.ca.Sign(context.Background(), SignRequest{CSR: serverCSR(t, "refused.example.test")})
	if KindOf(err) != KindIssuerUnusable || !errors.Is(err, sentinel) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Sign: got %v, want KindIssuerUnusable/%v containing %q", err, sentinel, want)
	}
	if n := countCerts(t, e.store); n != before {
		t.Fatalf("inventory grew from %d to %d", before, n)
	}
}

// ux review §3: a TTL below a minute (--ttl 1ns gave 30 days) is refused;
// above the profile maximum it is capped with a warning.
func TestSignTTL(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	tests := []struct {
		ttl      time.Duration
		err      string
		lifetime time.Duration // NotAfter - now, ± a minute
		warning  string
	}{
		{ttl: time.Nanosecond, err: "below the minimum of 1m0s"},
		{ttl: 59 * time.Second, err: "below the minimum"},
		{ttl: -time.Hour, err: "negative TTL"},
		{ttl: time.Minute, lifetime: time.Minute},
		{ttl: 0, lifetime: 30 * 24 * time.Hour},
		{ttl: 100000 * time.Hour, lifetime: 90 * 24 * time.Hour, warning: "exceeds the maximum"},
	}
	for _, tc := range tests {
		t.Run(tc.ttl.String(), func(t *testing.T) {
			iss, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "ttl.example.test"), TTL: tc.ttl})
			if tc.err != "" {
				if KindOf(err) != KindBadRequest || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want bad_request containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Until(iss.Certificate.NotAfter) - tc.lifetime; d < -time.Minute || d > time.Minute {
				t.Errorf("lifetime %v, want %v", time.Until(iss.Certificate.NotAfter), tc.lifetime)
			}
			if got := strings.Join(iss.Warnings, "; "); (tc.warning == "") != (got == "") || !strings.Contains(got, tc.warning) {
				t.Errorf("warnings %q, want %q", got, tc.warning)
			}
		})
	}
}
