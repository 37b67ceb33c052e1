package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/hsm"
)

func needOpenSSL(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl not found (install it: apt-get install -y openssl): %v", err)
	}
	return p
}

func writePEM(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func runOpenSSL(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(needOpenSSL(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// serveCA is a minimal stand-in for the HTTP front end: CRLs, issuer
// certificates and OCSP (POST) at the package's URL paths.
func serveCA(a **Authority) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /crl/{issuer}/{file}", func(w http.ResponseWriter, r *http.Request) {
		shard, err := strconv.Atoi(strings.TrimSuffix(r.PathValue("file"), ".crl"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		der, err := (*a).CRL(r.Context(), r.PathValue("issuer"), shard)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der)
	})
	mux.HandleFunc("POST "+OCSPPath, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 8192))
		der, err := (*a).OCSP(r.Context(), body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(der)
	})
	return httptest.NewServer(mux)
}

func TestOpenSSL(t *testing.T) {
	for _, kt := range []hsm.KeyType{hsm.ECDSAP256, hsm.RSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			ctx := context.Background()
			var a *Authority
			srv := serveCA(&a)
			defer srv.Close()
			cfg := testConfig()
			cfg.PublicURL = srv.URL
			cfg.KeyType = kt
			e := newEnv(t, cfg, true)
			a = e.ca
			dir := t.TempDir()

			// A CSR made by openssl req.
			runOpenSSL(t, dir, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
				"-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=www.example.test",
				"-addext", "subjectAltName=DNS:www.example.test,IP:10.0.0.7")
			csr, err := os.ReadFile(filepath.Join(dir, "leaf.csr"))
			if err != nil {
				t.Fatal(err)
			}
			iss, err := a.Sign(ctx, SignRequest{CSR: csr, Requester: "openssl"})
			if err != nil {
				t.Fatal(err)
			}
			other := issueN(t, a, 1)[0]
			writePEM(t, filepath.Join(dir, "root.pem"), a.Root())
			writePEM(t, filepath.Join(dir, "int.pem"), iss.Chain[0])
			writePEM(t, filepath.Join(dir, "leaf.pem"), iss.Certificate)
			writePEM(t, filepath.Join(dir, "other.pem"), other.Certificate)
			if err := os.WriteFile(filepath.Join(dir, "chain.pem"), iss.ChainPEM(), 0o600); err != nil {
				t.Fatal(err)
			}
			out := runOpenSSL(t, dir, "verify", "-CAfile", "root.pem", "-untrusted", "int.pem", "leaf.pem")
			if !strings.Contains(out, "leaf.pem: OK") {
				t.Fatalf("openssl verify: %s", out)
			}
			// TLS server purpose, and the chain file the CA returns.
			runOpenSSL(t, dir, "verify", "-purpose", "sslserver", "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem")

			if err := a.Revoke(ctx, iss.Record.Serial, ReasonKeyCompromise); err != nil {
				t.Fatal(err)
			}
			// The CRL at the certificate's CDP URL.
			resp, err := http.Get(iss.Certificate.CRLDistributionPoints[0])
			if err != nil {
				t.Fatal(err)
			}
			crlDER, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err := os.WriteFile(filepath.Join(dir, "shard.crl"), crlDER, 0o600); err != nil {
				t.Fatal(err)
			}
			text := runOpenSSL(t, dir, "crl", "-inform", "DER", "-in", "shard.crl", "-noout", "-text")
			serialUpper := strings.ToUpper(iss.Certificate.SerialNumber.Text(16))
			for _, want := range []string{"Issuing Distribution Point", iss.Certificate.CRLDistributionPoints[0], "Key Compromise", "X509v3 CRL Number"} {
				if !strings.Contains(text, want) {
					t.Fatalf("openssl crl -text lacks %q:\n%s", want, text)
				}
			}
			if !strings.Contains(strings.ReplaceAll(text, ":", ""), serialUpper) && !strings.Contains(text, serialUpper) {
				t.Fatalf("CRL does not list serial %s:\n%s", serialUpper, text)
			}
			// CRL checking with the shard CRL: revoked.
			runOpenSSL(t, dir, "crl", "-inform", "DER", "-in", "shard.crl", "-out", "shard.pem")
			cmd := exec.Command(needOpenSSL(t), "verify", "-crl_check", "-CAfile", "root.pem", "-untrusted", "int.pem", "-CRLfile", "shard.pem", "leaf.pem")
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "revoked") {
				t.Fatalf("openssl verify -crl_check of a revoked certificate: %v %s", err, out)
			}

			// OCSP over HTTP.
			ocspURL := iss.Certificate.OCSPServer[0]
			out = runOpenSSL(t, dir, "ocsp", "-issuer", "int.pem", "-cert", "leaf.pem", "-url", ocspURL, "-CAfile", "root.pem", "-no_nonce")
			if !strings.Contains(out, "leaf.pem: revoked") || !strings.Contains(out, "Response verify OK") {
				t.Fatalf("openssl ocsp (revoked): %s", out)
			}
			out = runOpenSSL(t, dir, "ocsp", "-issuer", "int.pem", "-cert", "other.pem", "-url", ocspURL, "-CAfile", "root.pem", "-no_nonce")
			if !strings.Contains(out, "other.pem: good") || !strings.Contains(out, "Response verify OK") {
				t.Fatalf("openssl ocsp (good): %s", out)
			}
		})
	}
}
