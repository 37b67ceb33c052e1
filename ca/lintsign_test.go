package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// lintSignParent is a self-signed CA certificate over key.
func lintSignParent(t *testing.T, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "Lint Sign Test CA", Organization: []string{"Sigil Test"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: []byte{1, 2, 3, 4},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// lintSignNow is fixed so two leaves from lintSignLeaf are identical.
var lintSignNow = time.Now().Truncate(time.Second)

func lintSignLeaf() *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: big.NewInt(0x1234567890abcdef), NotBefore: lintSignNow.Add(-time.Minute), NotAfter: lintSignNow.Add(time.Hour),
		DNSNames: []string{"leaf.example.test"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, AuthorityKeyId: []byte{1, 2, 3, 4},
	}
}

// badSigner flips a bit of every signature its key makes.
type badSigner struct{ crypto.Signer }

func (b badSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := b.Signer.Sign(r, digest, opts)
	if err == nil {
		sig[len(sig)/2] ^= 1
	}
	return sig, err
}

// namedKey is a test key with the name of its type.
type namedKey struct {
	name string
	key  crypto.Signer
}

// issuerKeys is one key of each type an issuer may have.
func issuerKeys(t *testing.T) []namedKey {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return []namedKey{
		{"P-256", mustKey(t, elliptic.P256())},
		{"P-384", mustKey(t, elliptic.P384())},
		{"P-521", mustKey(t, elliptic.P521())},
		{"RSA-2048", rsaKey},
		{"Ed25519", edKey},
	}
}

// signTBS must sign exactly the TBSCertificate that was linted, produce
// what x509.CreateCertificate would have for the same template, and refuse
// a signer whose signature does not verify.
func TestSignTBSSignsTheLintedBytes(t *testing.T) {
	e := newEnv(t, testConfig(), false)
	subject := mustKey(t, elliptic.P256())
	for _, tc := range issuerKeys(t) {
		t.Run(tc.name, func(t *testing.T) {
			parent := lintSignParent(t, tc.key)
			// What lint does: the same TBS under a throwaway key of the
			// issuer's type.
			shape, err := e.ca.lintShape(tc.key.Public())
			if err != nil {
				t.Fatal(err)
			}
			throwaway := shape.key
			fake := *parent
			fake.PublicKey = throwaway.Public()
			lintDER, err := x509.CreateCertificate(rand.Reader, lintSignLeaf(), &fake, subject.Public(), throwaway)
			if err != nil {
				t.Fatal(err)
			}
			linted, err := x509.ParseCertificate(lintDER)
			if err != nil {
				t.Fatal(err)
			}
			der, cert, err := signTBS(lintDER, parent, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cert.RawTBSCertificate, linted.RawTBSCertificate) || !bytes.Equal(cert.Raw, der) {
				t.Fatal("the signed TBSCertificate differs from the linted one")
			}
			if err := cert.CheckSignatureFrom(parent); err != nil {
				t.Fatalf("signature does not verify under the issuer: %v", err)
			}
			// The standard library, given the same template, builds the
			// same TBSCertificate and names the same algorithm.
			std, err := x509.CreateCertificate(rand.Reader, lintSignLeaf(), parent, subject.Public(), tc.key)
			if err != nil {
				t.Fatal(err)
			}
			stdCert, err := x509.ParseCertificate(std)
			if err != nil {
				t.Fatal(err)
			}
			if stdCert.SignatureAlgorithm != cert.SignatureAlgorithm {
				t.Fatalf("algorithm %v, x509.CreateCertificate uses %v", cert.SignatureAlgorithm, stdCert.SignatureAlgorithm)
			}
			if !bytes.Equal(stdCert.RawTBSCertificate, cert.RawTBSCertificate) {
				t.Fatal("TBSCertificate differs from x509.CreateCertificate's")
			}
			if _, _, err := signTBS(lintDER, parent, badSigner{tc.key}); err == nil || !strings.Contains(err.Error(), "does not verify") {
				t.Fatalf("faulty signer: got %v, want a verification failure", err)
			}
			// A signer of another key is refused the same way.
			if _, _, err := signTBS(lintDER, parent, throwaway); err == nil {
				t.Fatal("a signature by another key was accepted")
			}
		})
	}
}

// The linter must find exactly what zlint.LintCertificateEx finds with the
// same registry, on clean certificates and on ones that fail lints, also
// when run from many goroutines at once.
func TestLinterMatchesZlint(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testConfig(), true)
	var ders [][]byte
	iss, err := e.ca.Sign(ctx, SignRequest{CSR: serverCSR(t, "clean.example.test", "www.example.test")})
	if err != nil {
		t.Fatal(err)
	}
	ders = append(ders, iss.DER)
	for _, in := range e.ca.Issuers() {
		ders = append(ders, in.Certificate.Raw)
	}
	key := mustKey(t, elliptic.P256())
	parent := lintSignParent(t, key)
	bad := []func(c *x509.Certificate){
		func(c *x509.Certificate) { c.NotAfter = c.NotBefore.Add(5 * 365 * 24 * time.Hour) }, // BR validity
		func(c *x509.Certificate) { c.DNSNames = []string{"bad_name.example.test", "-x.example.test"} },
		func(c *x509.Certificate) { c.DNSNames = nil; c.Subject = pkix.Name{CommonName: "no san"} },
		func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign },
	}
	for _, mod := range bad {
		tmpl := lintSignLeaf()
		mod(tmpl)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, mustKey(t, elliptic.P256()).Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		ders = append(ders, der)
	}
	failing := 0
	var wg sync.WaitGroup
	for i, der := range ders {
		zc, err := zx509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		rs := zlint.LintCertificateEx(zc, e.ca.lintReg)
		wantErr := lintFindings(rs, lint.Error)
		var wantWarn []string
		for _, f := range lintFindings(rs, lint.Warn) {
			if !slices.Contains(wantErr, f) {
				wantWarn = append(wantWarn, f)
			}
		}
		if len(wantErr) > 0 {
			failing++
		}
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				gotErr, gotWarn := e.ca.linter.run(zc)
				// By name: some lints word their details from a map, in
				// no fixed order.
				if !slices.Equal(lintNames(gotErr), lintNames(wantErr)) || !slices.Equal(lintNames(gotWarn), lintNames(wantWarn)) {
					t.Errorf("certificate %d: linter found errors %v warnings %v; zlint %v and %v", i, gotErr, gotWarn, wantErr, wantWarn)
				}
			}()
		}
	}
	wg.Wait()
	if failing < len(bad) {
		t.Fatalf("only %d of the %d bad certificates fail zlint: the comparison proves little", failing, len(bad))
	}
}

// lintNames strips the details from "name (details)" findings.
func lintNames(findings []string) []string {
	out := make([]string, len(findings))
	for i, f := range findings {
		out[i], _, _ = strings.Cut(f, " ")
	}
	return out
}
