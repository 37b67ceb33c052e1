package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// step-ca, for the side-by-side run: StepCASetup writes a complete step-ca
// configuration (root, intermediate, a JWK provisioner, badger store) so no
// `step` CLI is needed, and StepCASign mints one JWK one-time token per
// request as step's own clients do.

// StepCAProvisioner is the JWK provisioner's private half, as the harness
// keeps it (provisioner.json).
type StepCAProvisioner struct {
	Name  string `json:"name"`
	KeyID string `json:"kid"`
	D     string `json:"d"` // P-256 private scalar, base64url
	X     string `json:"x"`
	Y     string `json:"y"`
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (p StepCAProvisioner) key() (*ecdsa.PrivateKey, error) {
	d, err := base64.RawURLEncoding.DecodeString(p.D)
	if err != nil {
		return nil, fmt.Errorf("provisioner key: %w", err)
	}
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
	if err != nil {
		return nil, fmt.Errorf("provisioner key: %w", err)
	}
	return k, nil
}

// StepCASetup writes root_ca.crt, intermediate_ca.crt, intermediate_ca_key,
// ca.json (listening on addr, badger under dir/db) and provisioner.json
// into dir.
func StepCASetup(dir, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("step-ca address %q: %w", addr, err)
	}
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("step-ca root key: %w", err)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench step-ca Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return fmt.Errorf("step-ca root: %w", err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return fmt.Errorf("step-ca root: %w", err)
	}
	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("step-ca intermediate key: %w", err)
	}
	intTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Bench step-ca Intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	intDER, err := x509.CreateCertificate(rand.Reader, intTmpl, root, &intKey.PublicKey, rootKey)
	if err != nil {
		return fmt.Errorf("step-ca intermediate: %w", err)
	}
	intPKCS8, err := x509.MarshalPKCS8PrivateKey(intKey)
	if err != nil {
		return fmt.Errorf("step-ca intermediate key: %w", err)
	}
	provKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("provisioner key: %w", err)
	}
	raw, err := provKey.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return fmt.Errorf("provisioner key: %w", err)
	}
	d, err := provKey.Bytes()
	if err != nil {
		return fmt.Errorf("provisioner key: %w", err)
	}
	x, y := raw[1:33], raw[33:]
	// The key ID is the RFC 7638 thumbprint, as step's tools set it.
	thumb := sha256.Sum256(fmt.Appendf(nil, `{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}`, b64(x), b64(y)))
	prov := StepCAProvisioner{Name: "bench", KeyID: b64(thumb[:]), D: b64(d), X: b64(x), Y: b64(y)}
	caJSON := map[string]any{
		"root":     filepath.Join(dir, "root_ca.crt"),
		"crt":      filepath.Join(dir, "intermediate_ca.crt"),
		"key":      filepath.Join(dir, "intermediate_ca_key"),
		"address":  addr,
		"dnsNames": []string{host, "localhost"},
		"logger":   map[string]any{"format": "text"},
		"db":       map[string]any{"type": "badgerv2", "dataSource": filepath.Join(dir, "db")},
		"authority": map[string]any{
			"provisioners": []any{map[string]any{
				"type": "JWK", "name": prov.Name,
				"key": map[string]any{"use": "sig", "kty": "EC", "kid": prov.KeyID, "crv": "P-256", "alg": "ES256", "x": prov.X, "y": prov.Y},
			}, map[string]any{
				// The acme scenario's provisioner: its directory is
				// /acme/acme/directory.
				"type": "ACME", "name": "acme",
			}},
		},
		"tls": map[string]any{
			"cipherSuites":  []string{"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
			"minVersion":    1.2,
			"maxVersion":    1.3,
			"renegotiation": false,
		},
	}
	cj, err := json.MarshalIndent(caJSON, "", "  ")
	if err != nil {
		return fmt.Errorf("ca.json: %w", err)
	}
	pj, err := json.MarshalIndent(prov, "", "  ")
	if err != nil {
		return fmt.Errorf("provisioner.json: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"root_ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}), 0o644},
		{"intermediate_ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: intDER}), 0o644},
		{"intermediate_ca_key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: intPKCS8}), 0o600},
		{"ca.json", cj, 0o600},
		{"provisioner.json", pj, 0o600},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("step-ca setup: %w", err)
		}
	}
	return nil
}

// StepCAConn are the settings to reach a step-ca.
type StepCAConn struct {
	URL         string // https://127.0.0.1:PORT
	Root        string // root_ca.crt
	Provisioner string // provisioner.json written by StepCASetup
}

// StepCASign is the sign scenario against step-ca's /1.0/sign: a fresh
// one-time token (ES256 JWT, unique jti) per request, as its users send.
type StepCASign struct {
	client   *http.Client
	url, aud string
	prov     StepCAProvisioner
	key      *ecdsa.PrivateKey
	csrs     *csrCycle
}

// NewStepCASign prepares the scenario; CSRs must carry DNS names (the
// token's subject and SANs are the CSR's name).
func NewStepCASign(c StepCAConn, csrs []CSR, workers int) (*StepCASign, error) {
	rootPEM, err := os.ReadFile(c.Root)
	if err != nil {
		return nil, fmt.Errorf("step-ca root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("%s: no PEM certificate", c.Root)
	}
	pj, err := os.ReadFile(c.Provisioner)
	if err != nil {
		return nil, fmt.Errorf("step-ca provisioner: %w", err)
	}
	var prov StepCAProvisioner
	if err := json.Unmarshal(pj, &prov); err != nil {
		return nil, fmt.Errorf("step-ca provisioner %s: %w", c.Provisioner, err)
	}
	key, err := prov.key()
	if err != nil {
		return nil, err
	}
	u, err := parseHTTPSURL(c.URL)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: workers,
		ForceAttemptHTTP2:   true,
	}
	return &StepCASign{
		client: &http.Client{Transport: tr, Timeout: time.Minute},
		url:    u + "/1.0/sign",
		// step-ca accepts https://DNSNAME/1.0/sign without the port.
		aud:  "https://" + hostOf(u) + "/1.0/sign",
		prov: prov, key: key,
		csrs: newCSRCycle(csrs, workers),
	}, nil
}

func parseHTTPSURL(s string) (string, error) {
	if len(s) < len("https://x") || s[:8] != "https://" {
		return "", fmt.Errorf("step-ca URL %q: want https://HOST:PORT", s)
	}
	return string(bytes.TrimRight([]byte(s), "/")), nil
}

func hostOf(u string) string {
	hp := u[len("https://"):]
	if h, _, err := net.SplitHostPort(hp); err == nil {
		return h
	}
	return hp
}

func (s *StepCASign) Name() string   { return "sign" }
func (s *StepCASign) Target() string { return "step-ca" }

// token mints a JWK provisioner one-time token for name.
func (s *StepCASign) token(name string) (string, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	now := time.Now().Unix()
	hdr, err := json.Marshal(map[string]any{"alg": "ES256", "kid": s.prov.KeyID, "typ": "JWT"})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]any{
		"iss": s.prov.Name, "sub": name, "aud": s.aud, "sans": []string{name},
		"iat": now, "nbf": now, "exp": now + 300, "jti": hex.EncodeToString(jti[:]),
	})
	if err != nil {
		return "", err
	}
	signing := b64(hdr) + "." + b64(claims)
	h := sha256.Sum256([]byte(signing))
	r, ss, err := ecdsa.Sign(rand.Reader, s.key, h[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return signing + "." + b64(sig), nil
}

func (s *StepCASign) Do(ctx context.Context, worker int) error {
	csr := s.csrs.take(worker)
	ott, err := s.token(csr.Name)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	body, err := json.Marshal(map[string]string{"csr": string(csr.PEM), "ott": ott})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("step-ca sign: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("step-ca sign: %w", err)
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("step-ca sign: %s: %s", resp.Status, bytes.TrimSpace(data))
	}
	var out struct {
		Crt string `json:"crt"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return fmt.Errorf("step-ca sign: answer: %w", err)
	}
	if out.Crt == "" {
		return errors.New("step-ca sign: answer holds no certificate")
	}
	return checkLeafPEM([]byte(out.Crt))
}

func (s *StepCASign) Close() error {
	s.client.CloseIdleConnections()
	return nil
}
