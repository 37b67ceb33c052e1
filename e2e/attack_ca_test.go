package e2e

// Regression tests for security review findings #1 (a subordinate CA from
// the workload path ca/sign/intermediate) and #3 (Sigil's own intermediate
// revoked through ca/revoke, and issuance continuing from it), replayed
// against the built binary as the review did.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// caAttackEnv is a server plus helpers to act under other tokens.
type caAttackEnv struct {
	t   *testing.T
	d   *devServer
	dir string
}

func (e caAttackEnv) path(name string) string { return filepath.Join(e.dir, name) }

// as runs the CLI with tok instead of the root token.
func (e caAttackEnv) as(tok string, args ...string) (string, string, int) {
	e.t.Helper()
	saved := e.d.exports["SIGIL_TOKEN"]
	e.d.exports["SIGIL_TOKEN"] = tok
	defer func() { e.d.exports["SIGIL_TOKEN"] = saved }()
	return e.d.cli(e.t, args...)
}

// root runs the CLI with the root token.
func (e caAttackEnv) root(args ...string) (string, string, int) {
	e.t.Helper()
	return e.d.cli(e.t, args...)
}

// token writes a policy (as root) and returns a token holding only it.
func (e caAttackEnv) token(name, policyYAML string) string {
	e.t.Helper()
	if err := os.WriteFile(e.path(name+".yaml"), []byte(policyYAML), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if _, stderr, code := e.root("policy", "write", name, e.path(name+".yaml")); code != 0 {
		e.t.Fatalf("policy write %s: %s", name, stderr)
	}
	out, stderr, code := e.root("token", "create", "--policy", name, "--ttl", "1h", "--format", "json")
	var resp struct{ Token string }
	if code != 0 || json.Unmarshal([]byte(out), &resp) != nil || resp.Token == "" {
		e.t.Fatalf("token create %s: %s %s", name, out, stderr)
	}
	return resp.Token
}

// writeCSR writes a PEM CSR for key with subject and DNS names.
func (e caAttackEnv) writeCSR(name string, key crypto.Signer, subject pkix.Name, dns ...string) string {
	e.t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject, DNSNames: dns}, key)
	if err != nil {
		e.t.Fatal(err)
	}
	p := e.path(name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func caAttackKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// caAttackCerts parses every certificate of a PEM bundle.
func caAttackCerts(t *testing.T, bundle string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := []byte(bundle); ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func caAttackPEM(t *testing.T, path string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// caAttackForge signs a leaf with a key the caller holds, outside Sigil, as
// the holder of a rogue sub-CA would.
func caAttackForge(t *testing.T, ca *x509.Certificate, caKey crypto.Signer, dns []string, uris ...string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames: dns,
	}
	for _, s := range uris {
		u, _ := url.Parse(s)
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, caAttackKey(t).Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// caAttackCount counts inventory records of a profile.
func caAttackCount(e caAttackEnv, profile string) int {
	e.t.Helper()
	out, stderr, code := e.root("ca", "list", "--format", "json")
	var rows []struct{ Profile string }
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil {
		e.t.Fatalf("ca list: %s %s", out, stderr)
	}
	n := 0
	for _, r := range rows {
		if r.Profile == profile {
			n++
		}
	}
	return n
}

func caAttackWant(t *testing.T, what, stderr string, code int, wantCode int, wants ...string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("%s: exit %d, want %d; stderr: %s", what, code, wantCode, stderr)
	}
	for _, w := range wants {
		if !strings.Contains(stderr, w) {
			t.Errorf("%s: stderr does not say %q: %s", what, w, stderr)
		}
	}
}

// Finding #1: a token with ca/sign/* and one DNS grant (or **, or root)
// asks for profile intermediate; subordinate CAs come only from the sudo
// operation, always name-constrained, and a leaf outside the permitted
// subtree fails verification.
func TestAttackCASubordinateCA(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	e := caAttackEnv{t: t, d: startDev(t, filepath.Join(dir, "data")), dir: dir}
	names := "names:\n  dns: [\"*.payments.example.org\"]\n"
	signer := e.token("signer", "rules:\n  - path: \"ca/sign/*\"\n    capabilities: [create]\n"+names)
	greedy := e.token("greedy", "rules:\n  - path: \"**\"\n    capabilities: [create, read, update, delete, list, sudo]\n"+names)
	subKey := caAttackKey(t)
	csr := e.writeCSR("subca.csr", subKey, pkix.Name{Country: []string{"US"}, Organization: []string{"Evil Corp"}, CommonName: "ca.payments.example.org"})
	before := caAttackCount(e, "intermediate")

	// The review's exact command, under each token.
	for who, tok := range map[string]string{"signer": signer, "greedy": greedy, "root": e.d.exports["SIGIL_TOKEN"]} {
		out, stderr, code := e.as(tok, "ca", "sign", "--csr", csr, "--profile", "intermediate", "--ttl", "87600h")
		caAttackWant(t, who+": ca sign --profile intermediate", stderr, code, 1, "issues CA certificates", "sign-intermediate")
		if strings.Contains(out, "BEGIN CERTIFICATE") {
			t.Fatalf("%s got a certificate from profile intermediate:\n%s", who, out)
		}
	}
	// The administrative operation is out of reach without sudo on sys/.
	for who, tok := range map[string]string{"signer": signer, "greedy": greedy} {
		_, stderr, code := e.as(tok, "ca", "sign-intermediate", "--csr", csr, "--permitted-dns", "payments.example.org")
		caAttackWant(t, who+": ca sign-intermediate", stderr, code, 1, "sys/ca/sign/intermediate")
	}
	if n := caAttackCount(e, "intermediate"); n != before {
		t.Fatalf("CA certificates in the inventory went from %d to %d", before, n)
	}

	// With sudo on sys/ca/sign/intermediate: constraints are mandatory,
	// in the CLI and in the server.
	admin := e.token("subca-admin", "rules:\n  - path: \"sys/ca/sign/intermediate\"\n    capabilities: [create, sudo]\n")
	_, stderr, code := e.as(admin, "ca", "sign-intermediate", "--csr", csr)
	caAttackWant(t, "sign-intermediate without constraints (CLI)", stderr, code, 2, "--permitted-dns")
	conn, ctx := e.d.grpcConn(t)
	csrPEM, _ := os.ReadFile(csr)
	_, err := sigilv1.NewCAServiceClient(conn).SignIntermediate(ctx, &sigilv1.SignIntermediateRequest{Csr: csrPEM})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "permitted subtree") {
		t.Fatalf("SignIntermediate without constraints (gRPC, root): %v", err)
	}
	// ca/sign/intermediate over gRPC, as root: refused too.
	_, err = sigilv1.NewCAServiceClient(conn).Sign(ctx, &sigilv1.SignRequest{Csr: csrPEM, Profile: "intermediate"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Sign profile intermediate (gRPC, root): %v", err)
	}

	out, stderr, code := e.as(admin, "ca", "sign-intermediate", "--csr", csr, "--permitted-dns", "payments.example.org", "--ttl", "720h")
	if code != 0 {
		t.Fatalf("sign-intermediate: %s", stderr)
	}
	certs := caAttackCerts(t, out)
	if len(certs) != 2 {
		t.Fatalf("want the sub-CA and the root, got %d certificates", len(certs))
	}
	sub, root := certs[0], certs[1]
	critical := false
	for _, ext := range sub.Extensions {
		if ext.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 30}) {
			critical = ext.Critical
		}
	}
	if !sub.IsCA || !critical || strings.Join(sub.PermittedDNSDomains, ",") != "payments.example.org" {
		t.Fatalf("sub-CA: IsCA %v, critical name constraints %v, permitted DNS %v", sub.IsCA, critical, sub.PermittedDNSDomains)
	}

	// The review's forged leaf (a name never granted, and an admin SPIFFE
	// ID) fails verification; a leaf inside the subtree passes.
	roots := x509.NewCertPool()
	roots.AddCert(root)
	mids := x509.NewCertPool()
	mids.AddCert(sub)
	subPath, rootPath := caAttackPEM(t, e.path("sub.pem"), sub), caAttackPEM(t, e.path("root.pem"), root)
	for _, tc := range []struct {
		name string
		leaf *x509.Certificate
		ok   bool
	}{
		{"inside", caAttackForge(t, sub, subKey, []string{"api.payments.example.org"}), true},
		{"forged name", caAttackForge(t, sub, subKey, []string{"bank.internal.example.com"}), false},
		{"forged SPIFFE ID", caAttackForge(t, sub, subKey, []string{"api.payments.example.org"}, "spiffe://sigil.test/ns/admin/ops"), false},
	} {
		_, err := tc.leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: mids, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		var cie x509.CertificateInvalidError
		if tc.ok != (err == nil) || (!tc.ok && (!errors.As(err, &cie) || cie.Reason != x509.CANotAuthorizedForThisName)) {
			t.Errorf("%s: Go verification: %v", tc.name, err)
		}
		leafPath := caAttackPEM(t, e.path(tc.name+".pem"), tc.leaf)
		got, err := exec.Command("openssl", "verify", "-CAfile", rootPath, "-untrusted", subPath, "-purpose", "sslserver", leafPath).CombinedOutput()
		if tc.ok != (err == nil) || (!tc.ok && !strings.Contains(string(got), "subtree")) {
			t.Errorf("%s: openssl verify: %v %s", tc.name, err, got)
		}
	}
	// The sub-CA is an issuer certificate: not revocable through ca/revoke.
	_, stderr, code = e.root("ca", "revoke", sub.SerialNumber.Text(16))
	caAttackWant(t, "ca revoke of the sub-CA", stderr, code, 1, "issuer (CA) certificate")
	if _, stderr, code := e.root("ca", "intermediate", "revoke", "--serial", sub.SerialNumber.Text(16), "--reason", "cACompromise"); code != 0 {
		t.Fatalf("ca intermediate revoke --serial (sub-CA): %s", stderr)
	}
}

// caAttackMetric returns the text of /metrics.
func caAttackMetrics(t *testing.T, d *devServer) string {
	t.Helper()
	resp, err := d.httpClient(t).Get("https://" + d.httpsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

type caAttackIssuer struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`
	Active bool   `json:"active"`
}

func caAttackActive(e caAttackEnv) (id, rootID string) {
	e.t.Helper()
	out, stderr, code := e.root("ca", "issuers", "--format", "json")
	var list []caAttackIssuer
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		e.t.Fatalf("ca issuers: %s %s", out, stderr)
	}
	for _, is := range list {
		switch {
		case is.Kind == "intermediate" && is.Active:
			id = is.ID
		case is.Kind == "root":
			rootID = is.ID
		}
	}
	return id, rootID
}

// caAttackRootCRL returns the serials on the root's CRL.
func caAttackRootCRL(e caAttackEnv, rootID string) map[string]bool {
	e.t.Helper()
	p := e.path("root.crl")
	if _, stderr, code := e.root("ca", "crl", "--issuer", rootID, "--out", p); code != 0 {
		e.t.Fatalf("ca crl: %s", stderr)
	}
	der, _ := os.ReadFile(p)
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, ent := range crl.RevokedCertificateEntries {
		out[ent.SerialNumber.Text(16)] = true
	}
	return out
}

// Finding #3: ca/revoke cannot revoke the active intermediate; only the
// sudo hierarchy operation can, and nothing is issued from a revoked
// issuer (refused, logged, counted).
func TestAttackCARevokeIssuer(t *testing.T) {
	dir := t.TempDir()
	e := caAttackEnv{t: t, d: startDev(t, filepath.Join(dir, "data")), dir: dir}
	revoker := e.token("revoker", "rules:\n  - path: \"ca/revoke\"\n    capabilities: [update]\n")
	signer := e.token("signer", "rules:\n  - path: \"ca/sign/*\"\n    capabilities: [create]\nnames:\n  dns: [\"*.example.test\"]\n")
	chain, _, _ := e.root("ca", "chain")
	old := caAttackCerts(t, chain)[0]
	oldSerial := old.SerialNumber.Text(16)
	oldID, rootID := caAttackActive(e)
	leafCSR := e.writeCSR("leaf.csr", caAttackKey(t), pkix.Name{}, "svc.example.test")

	// The review's exact command, and the same as root.
	for who, tok := range map[string]string{"revoker": revoker, "root": e.d.exports["SIGIL_TOKEN"]} {
		_, stderr, code := e.as(tok, "ca", "revoke", oldSerial, "--reason", "keyCompromise")
		caAttackWant(t, who+": ca revoke of the intermediate", stderr, code, 1, "issuer (CA) certificate", "sigil ca intermediate revoke")
	}
	if crl := caAttackRootCRL(e, rootID); crl[oldSerial] {
		t.Fatal("the intermediate is on the root CRL")
	}
	// The hierarchy operation needs sudo on sys/ca/hierarchy.
	_, stderr, code := e.as(revoker, "ca", "intermediate", "revoke", oldID)
	caAttackWant(t, "revoker: ca intermediate revoke", stderr, code, 1, "sys/ca/hierarchy")
	// The active intermediate is revoked only with a rotation or --force.
	_, stderr, code = e.root("ca", "intermediate", "revoke", oldID)
	caAttackWant(t, "root: ca intermediate revoke (active, no flags)", stderr, code, 1, "--rotate")
	if _, stderr, code := e.as(signer, "ca", "sign", "--csr", leafCSR); code != 0 {
		t.Fatalf("signing before any revocation: %s", stderr)
	}

	out, stderr, code := e.root("ca", "intermediate", "revoke", "--rotate", "--reason", "keyCompromise", oldID)
	if code != 0 || !strings.Contains(out, "active intermediate is now") {
		t.Fatalf("revoke --rotate: %s %s", out, stderr)
	}
	newID, _ := caAttackActive(e)
	if newID == "" || newID == oldID {
		t.Fatalf("active intermediate after rotation: %q (old %q)", newID, oldID)
	}
	if crl := caAttackRootCRL(e, rootID); !crl[oldSerial] {
		t.Fatal("the revoked intermediate is not on the root CRL")
	}
	out, stderr, code = e.as(signer, "ca", "sign", "--csr", leafCSR)
	if code != 0 {
		t.Fatalf("signing after rotation: %s", stderr)
	}
	if got := caAttackCerts(t, out); len(got) < 2 || got[1].Equal(old) {
		t.Fatal("a leaf was issued from the revoked intermediate")
	}

	// Revoked without a replacement: issuance stops, with a clear error,
	// an error-level log line and a metric.
	if _, stderr, code := e.root("ca", "intermediate", "revoke", "--force", "--reason", "keyCompromise", newID); code != 0 {
		t.Fatalf("revoke --force: %s", stderr)
	}
	for who, tok := range map[string]string{"signer": signer, "root": e.d.exports["SIGIL_TOKEN"]} {
		out, stderr, code := e.as(tok, "ca", "sign", "--csr", leafCSR)
		caAttackWant(t, who+": ca sign from a revoked issuer", stderr, code, 1, "FailedPrecondition", "is revoked")
		if strings.Contains(out, "BEGIN CERTIFICATE") {
			t.Fatalf("%s: issued from a revoked intermediate", who)
		}
	}
	_, stderr, code = e.root("ca", "issue", "--spiffe-id", "spiffe://sigil.test/ns/a/sa/b", "--key-out", e.path("w.key"), "--cert-out", e.path("w.pem"))
	caAttackWant(t, "ca issue from a revoked issuer", stderr, code, 1, "is revoked")
	if m := caAttackMetrics(t, e.d); !strings.Contains(m, `sigil_ca_issuance_refused_total{reason="issuer_revoked"} 3`) {
		t.Errorf("metric not counted:\n%s", caAttackGrep(m, "sigil_ca_issuance_refused_total"))
	}
	if logs := e.d.stderr.String(); !strings.Contains(logs, "issuance refused") || !strings.Contains(caAttackGrep(logs, "issuance refused"), "ERROR") {
		t.Errorf("no error-level log of the refusal:\n%s", caAttackGrep(logs, "issuance refused"))
	}
	// A new intermediate restores issuance.
	if _, stderr, code := e.root("ca", "intermediate", "rotate"); code != 0 {
		t.Fatalf("rotate: %s", stderr)
	}
	if _, stderr, code := e.as(signer, "ca", "sign", "--csr", leafCSR); code != 0 {
		t.Fatalf("signing after a new rotation: %s", stderr)
	}
}

func caAttackGrep(text, needle string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, needle) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Finding #3, expiry: an imported intermediate that expires stops
// issuance with a clear error (the leaf is not merely capped to nothing).
func TestAttackCAExpiredIssuer(t *testing.T) {
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	d := startServer(t, filepath.Join(dir, "data"), false, listenerCA, "--tls-cert", cert, "--tls-key", key)
	e := caAttackEnv{t: t, d: d, dir: dir}
	out, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
	var initResp struct {
		RootToken string `json:"root_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &initResp) != nil {
		t.Fatalf("operator init: %s", stderr)
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	csrPEM, stderr, code := d.cli(t, "ca", "init", "--external-root", "--common-name", "Short Lived Intermediate", "--organization", "Sigil Test")
	b, _ := pem.Decode([]byte(csrPEM))
	if code != 0 || b == nil {
		t.Fatalf("ca init --external-root: %s %s", csrPEM, stderr)
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rootKey := caAttackKey(t)
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Offline Root", Organization: []string{"Sigil Test"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	expiry := now.Add(15 * time.Second)
	intDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: csr.Subject,
		NotBefore: now.Add(-time.Hour), NotAfter: expiry, IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, root, csr.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(intDER)
	if _, stderr, code := d.cli(t, "ca", "intermediate", "import", caAttackPEM(t, e.path("chain.pem"), inter, root)); code != 0 {
		t.Fatalf("import: %s", stderr)
	}
	leafCSR := e.writeCSR("leaf.csr", caAttackKey(t), pkix.Name{}, "svc.example.test")
	if _, stderr, code := d.cli(t, "ca", "sign", "--csr", leafCSR); code != 0 {
		t.Fatalf("signing before expiry: %s", stderr)
	}
	time.Sleep(time.Until(expiry) + time.Second)
	out, stderr, code = d.cli(t, "ca", "sign", "--csr", leafCSR)
	caAttackWant(t, "ca sign from an expired issuer", stderr, code, 1, "FailedPrecondition", "expired at")
	if strings.Contains(out, "BEGIN CERTIFICATE") {
		t.Fatal("issued from an expired intermediate")
	}
	if m := caAttackMetrics(t, d); !strings.Contains(m, `sigil_ca_issuance_refused_total{reason="issuer_expired"} 1`) {
		t.Errorf("metric not counted:\n%s", caAttackGrep(m, "sigil_ca_issuance_refused_total"))
	}
}

// ux review §3: --ttl 1ns gave a 30-day certificate.
func TestAttackCATTLBounds(t *testing.T) {
	dir := t.TempDir()
	e := caAttackEnv{t: t, d: startDev(t, filepath.Join(dir, "data")), dir: dir}
	leafCSR := e.writeCSR("leaf.csr", caAttackKey(t), pkix.Name{}, "svc.example.test")
	for _, ttl := range []string{"1ns", "999ms", "59s", "-1h"} {
		out, stderr, code := e.root("ca", "sign", "--csr", leafCSR, "--ttl", ttl)
		caAttackWant(t, "ca sign --ttl "+ttl, stderr, code, 2, "--ttl")
		if out != "" {
			t.Errorf("--ttl %s printed %q", ttl, out)
		}
	}
	// Past the CLI, the server refuses too (an older or another client).
	conn, ctx := e.d.grpcConn(t)
	csrPEM, _ := os.ReadFile(leafCSR)
	for _, secs := range []int64{1, 59, -1, 1 << 62} {
		_, err := sigilv1.NewCAServiceClient(conn).Sign(ctx, &sigilv1.SignRequest{Csr: csrPEM, TtlSeconds: secs})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("ttl_seconds %d: %v", secs, err)
		}
	}
	// Above the profile maximum: capped, with a warning.
	out, stderr, code := e.root("ca", "sign", "--csr", leafCSR, "--ttl", "50000h")
	if code != 0 || !strings.Contains(stderr, "warning:") || !strings.Contains(stderr, "capped") {
		t.Fatalf("--ttl 50000h: code %d, stderr %q", code, stderr)
	}
	if leaf := caAttackCerts(t, out)[0]; leaf.NotAfter.Sub(leaf.NotBefore) > 90*24*time.Hour+2*time.Minute {
		t.Errorf("lifetime %v beyond the server profile's 90 days", leaf.NotAfter.Sub(leaf.NotBefore))
	}
	if _, stderr, code := e.root("ca", "sign", "--csr", leafCSR, "--ttl", "1m"); code != 0 {
		t.Fatalf("--ttl 1m: %s", stderr)
	}
}
