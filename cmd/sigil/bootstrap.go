package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// fingerprint is the SHA-256 of a certificate's DER, in lower-case hex.
func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// parseFingerprint accepts hex with or without colons, in either case, and
// an optional "sha256:" prefix: the forms openssl, step and Sigil print.
func parseFingerprint(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:")
	s = strings.ReplaceAll(s, ":", "")
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return nil, usagef("--fingerprint must be a SHA-256 in hex (64 digits, colons allowed), e.g. from `sigil ca root --field fingerprint_sha256`")
	}
	return b, nil
}

// maxRootPEM bounds what bootstrap reads from the network.
const maxRootPEM = 64 << 10

// runCABootstrap fetches the root from the CA's HTTPS listener, trusting
// nothing until the root's fingerprint matches the one the operator gave,
// then checks that the listener's own certificate chains to that root, and
// pins it where the CLI looks by default.
func runCABootstrap(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "ca bootstrap", "sigil ca bootstrap --ca-url https://HOST:PORT --fingerprint SHA256 [--out FILE] [--force]")
	caURL := fs.String("ca-url", "", "the CA's HTTPS address (the listener serving /ca/root.pem)")
	fp := fs.String("fingerprint", "", "SHA-256 fingerprint of the root certificate (hex, colons allowed)")
	out := fs.String("out", "", "where to write the root (default: "+displayPath(defaultCACertPath(env))+")")
	force := fs.Bool("force", false, "replace an existing file that holds a different root")
	format := fs.String("format", "text", "output format: text or json")
	field := fs.String("field", "", "print only this field of the JSON output")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkArgs(fs, 0, 0); err != nil {
		return err
	}
	cf := clientFlags{format: *format, field: *field, addr: "-", env: env}
	if err := cf.validate(); err != nil {
		return err
	}
	if *caURL == "" || *fp == "" {
		return usagef("--ca-url and --fingerprint are required")
	}
	want, err := parseFingerprint(*fp)
	if err != nil {
		return err
	}
	base, err := url.Parse(*caURL)
	if err != nil || base.Scheme != "https" || base.Host == "" {
		return usagef("--ca-url %q: want https://HOST:PORT (the HTTPS listener)", *caURL)
	}
	dest := *out
	if dest == "" {
		if dest = defaultCACertPath(env); dest == "" {
			return usagef("HOME is unset: give --out")
		}
	}

	// The root is not known yet, so the TLS chain cannot be verified during
	// the handshake; the peer's certificates are kept and checked against
	// the root once its fingerprint has matched.
	var peer []*x509.Certificate
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			peer = cs.PeerCertificates
			return nil
		}}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment},
		CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("redirects are not followed") }}
	rootURL := base.JoinPath("ca", "root.pem").String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rootURL, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", rootURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxRootPEM+1))
	if err != nil {
		return fmt.Errorf("fetch %s: %w", rootURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: %s: %s", rootURL, resp.Status, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	block, _ := pem.Decode(body)
	if block == nil || block.Type != "CERTIFICATE" || len(body) > maxRootPEM {
		return fmt.Errorf("%s did not return a PEM certificate", rootURL)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("%s: %w", rootURL, err)
	}
	got := sha256.Sum256(root.Raw)
	if subtle.ConstantTimeCompare(got[:], want) != 1 {
		return fmt.Errorf("the root served at %s has fingerprint %s, not the one given: refusing to trust it", rootURL, hex.EncodeToString(got[:]))
	}
	if !root.IsCA {
		return fmt.Errorf("the certificate with that fingerprint is not a CA certificate")
	}
	// The listener must itself be vouched for by this root: a copy of the
	// right root served by someone else is not the CA.
	if len(peer) == 0 {
		return fmt.Errorf("%s presented no certificate", base.Host)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	if _, err := peer[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: base.Hostname()}); err != nil {
		return fmt.Errorf("%s's TLS certificate does not chain to the pinned root: %w", base.Host, err)
	}

	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	if old, err := os.ReadFile(dest); err == nil && string(old) != string(rootPEM) && !*force {
		return fmt.Errorf("%s already holds another certificate: give --force to replace it, or --out", dest)
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
		return err
	}
	if err := writeNew(dest, rootPEM, 0o644); err != nil {
		return err
	}
	abs, err := filepath.Abs(dest)
	if err != nil {
		abs = dest
	}
	view := map[string]any{"file": abs, "subject": root.Subject.String(), "fingerprint_sha256": hex.EncodeToString(got[:]),
		"not_after": root.NotAfter.UTC(), "default_path": abs == defaultCACertPath(env)}
	return cf.output(view, func(w io.Writer) error {
		fmt.Fprintf(env.stderr, "The root %s is pinned in %s.\n", root.Subject, abs)
		if abs == defaultCACertPath(env) {
			fmt.Fprintln(env.stderr, "The CLI uses it when SIGIL_CACERT is unset; to set it explicitly:")
		}
		_, err := fmt.Fprintf(w, "export SIGIL_CACERT=%s\n", shellQuote(abs))
		return err
	})
}

// displayPath shows the default path in help, or where it would be.
func displayPath(p string) string {
	if p == "" {
		return "$XDG_CONFIG_HOME/sigil/root.pem"
	}
	return p
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=@%+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
