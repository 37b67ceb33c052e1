package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// ux2Scrape fetches /metrics over HTTPS.
func ux2Scrape(t *testing.T, d *devServer) string {
	t.Helper()
	resp, err := d.httpClient(t).Get("https://" + d.httpsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, body)
	}
	return string(body)
}

// ux2Metric returns the value of the first sample of name whose labels
// contain every one of labels (each `key="value"`).
func ux2Metric(body, name string, labels ...string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		head := line[:sp]
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(head, l)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			return 0, false
		}
		return v, true
	}
	return 0, false
}

func ux2MustMetric(t *testing.T, body, name string, labels ...string) float64 {
	t.Helper()
	v, ok := ux2Metric(body, name, labels...)
	if !ok {
		t.Fatalf("no sample %s%v in /metrics:\n%s", name, labels, ux2Grep(body, "sigil_"))
	}
	return v
}

func ux2Grep(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestUx2ProductionStateMetricsStatusAndSeal walks a production server
// through sealed → initialised → CA → lease → sealed, scraping /metrics
// at each step: the seal and initialised gauges, the expiry gauges of the
// listener, root and intermediate certificates, the per-mount lease gauges,
// `sigil status` showing the threshold and the server's build while
// unsealed, and `sigil operator seal` succeeding on a sealed server.
func TestUx2ProductionStateMetricsStatusAndSeal(t *testing.T) {
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	d := startServer(t, filepath.Join(dir, "data"), false, listenerCA, "--tls-cert", cert, "--tls-key", key)

	m := ux2Scrape(t, d)
	if v := ux2MustMetric(t, m, "sigil_sealed"); v != 1 {
		t.Errorf("sigil_sealed = %v on a fresh server, want 1", v)
	}
	if v := ux2MustMetric(t, m, "sigil_initialized"); v != 0 {
		t.Errorf("sigil_initialized = %v on a fresh server, want 0", v)
	}
	// The listener certificate (listenerTLS: one hour) is exported while sealed.
	if v := ux2MustMetric(t, m, "sigil_certificate_expiry_seconds", `kind="listener"`, `id="2"`); v <= 0 || v > 3600 {
		t.Errorf("listener expiry = %v s, want within the hour it has left", v)
	}
	if v := ux2MustMetric(t, m, "sigil_build_info", `goversion="go`); v != 1 {
		t.Errorf("sigil_build_info = %v", v)
	}

	out, stderr, code := d.cli(t, "operator", "init", "--shares", "3", "--threshold", "2", "--format", "json")
	if code != 0 {
		t.Fatalf("operator init: %s", stderr)
	}
	var initResp struct {
		Shares    []string `json:"shares"`
		RootToken string   `json:"root_token"`
	}
	if err := json.Unmarshal([]byte(out), &initResp); err != nil {
		t.Fatal(err)
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	if _, stderr, code := d.cli(t, "ca", "init", "--common-name", "Ux2 Metrics CA"); code != 0 {
		t.Fatalf("ca init: %s", stderr)
	}

	// status: the threshold while unsealed, and the server's build.
	out, stderr, code = d.cli(t, "status", "--format", "json")
	if code != 0 {
		t.Fatalf("status: %d %s", code, stderr)
	}
	var st struct {
		Sealed          bool   `json:"sealed"`
		UnsealThreshold int    `json:"unseal_threshold"`
		GoVersion       string `json:"go_version"`
		ServerTime      string `json:"server_time"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.Sealed || st.UnsealThreshold != 2 || !strings.HasPrefix(st.GoVersion, "go") || st.ServerTime == "" {
		t.Errorf("status while unsealed = %s", out)
	}
	text, _, _ := d.cli(t, "status")
	if !strings.Contains(text, "Threshold:     2 shares") || !strings.Contains(text, "Build:") {
		t.Errorf("status text lacks threshold or build:\n%s", text)
	}

	// A lease on a tokens mount.
	for _, args := range [][]string{
		{"engine", "enable", "tokens", "--mount", "ux2tok"},
		{"role", "write", "ux2tok/r", "ttl=1h"},
		{"engine", "enable", "tokens", "--mount", "ux2idle"},
	} {
		if _, stderr, code := d.cli(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	c := mintToken(t, d, "ux2tok/r")

	m = ux2Scrape(t, d)
	if v := ux2MustMetric(t, m, "sigil_sealed"); v != 0 {
		t.Errorf("sigil_sealed = %v while unsealed", v)
	}
	if v := ux2MustMetric(t, m, "sigil_initialized"); v != 1 {
		t.Errorf("sigil_initialized = %v after init", v)
	}
	for _, kind := range []string{"root", "intermediate"} {
		v := ux2MustMetric(t, m, "sigil_certificate_expiry_seconds", `kind="`+kind+`"`)
		if v < 24*3600 {
			t.Errorf("%s expiry = %v s, want a fresh CA's years", kind, v)
		}
		if na := ux2MustMetric(t, m, "sigil_certificate_not_after_timestamp_seconds", `kind="`+kind+`"`); na < float64(time.Now().Unix()) {
			t.Errorf("%s notAfter %v is in the past", kind, na)
		}
	}
	if v := ux2MustMetric(t, m, "sigil_leases_active", `mount="ux2tok"`); v != 1 {
		t.Errorf("active leases of ux2tok = %v, want 1", v)
	}
	if v := ux2MustMetric(t, m, "sigil_leases_active", `mount="ux2idle"`); v != 0 {
		t.Errorf("active leases of ux2idle = %v, want 0", v)
	}
	if v := ux2MustMetric(t, m, "sigil_leases_irrevocable", `mount="ux2tok"`); v != 0 {
		t.Errorf("irrevocable leases of ux2tok = %v, want 0", v)
	}
	if _, stderr, code := d.cli(t, "lease", "revoke", c.LeaseID); code != 0 {
		t.Fatalf("lease revoke: %s", stderr)
	}
	if v := ux2MustMetric(t, ux2Scrape(t, d), "sigil_leases_active", `mount="ux2tok"`); v != 0 {
		t.Errorf("active leases of ux2tok after revoke = %v, want 0", v)
	}

	// Seal, then seal again: both succeed.
	if out, stderr, code := d.cli(t, "operator", "seal"); code != 0 || !strings.Contains(out, "Sealed: true") {
		t.Fatalf("operator seal: %d %s %s", code, out, stderr)
	}
	out, stderr, code = d.cli(t, "operator", "seal", "--format", "json")
	if code != 0 || !strings.Contains(out, `"already_sealed": true`) {
		t.Fatalf("operator seal on a sealed server: code %d, %s %s", code, out, stderr)
	}
	if v := ux2MustMetric(t, ux2Scrape(t, d), "sigil_sealed"); v != 1 {
		t.Errorf("sigil_sealed = %v after seal", v)
	}
	// While sealed, status shows the progress against the threshold.
	if text, _, code := d.cli(t, "status"); code != 2 || !strings.Contains(text, "Unseal:        0/2 shares") {
		t.Errorf("sealed status (exit %d):\n%s", code, text)
	}
}

// TestUx2OCSPAndCRLCaching fetches a certificate's OCSP response and CRL
// over the plain-HTTP listener: both carry Cache-Control max-age, Expires,
// Last-Modified and an ETag, answer 304 to If-None-Match, an OCSP request
// with a nonce gets it echoed (checked by openssl) and is not cacheable, and
// the requests are counted by result in /metrics.
func TestUx2OCSPAndCRLCaching(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	d := startDev(t, filepath.Join(dir, "data"))
	certPath, keyPath := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "leaf.key")
	if _, stderr, code := d.cli(t, "ca", "issue", "--spiffe-id", "spiffe://sigil.test/ux2/ocsp", "--cert-out", certPath, "--key-out", keyPath); code != 0 {
		t.Fatalf("ca issue: %s", stderr)
	}
	leafPEM, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafFrom(t, string(leafPEM))
	chain, _, code := d.cli(t, "ca", "chain")
	if code != 0 {
		t.Fatal("ca chain failed")
	}
	blk, _ := pem.Decode([]byte(chain))
	issuer, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.OCSPServer) != 1 || len(leaf.CRLDistributionPoints) != 1 {
		t.Fatalf("AIA OCSP %v, CDP %v", leaf.OCSPServer, leaf.CRLDistributionPoints)
	}
	reqDER, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	get := func(url, etag string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	checkCaching := func(what string, resp *http.Response, thisUpdate, nextUpdate time.Time) string {
		t.Helper()
		h := resp.Header
		cc := h.Get("Cache-Control")
		_, after, ok := strings.Cut(cc, "max-age=")
		if !ok {
			t.Fatalf("%s: Cache-Control %q has no max-age", what, cc)
		}
		maxAge, _ := strconv.Atoi(strings.SplitN(after, ",", 2)[0])
		if left := time.Until(nextUpdate); maxAge <= 0 || float64(maxAge) > left.Seconds()+1 {
			t.Errorf("%s: max-age %d, nextUpdate in %v", what, maxAge, left)
		}
		if exp, err := http.ParseTime(h.Get("Expires")); err != nil || !exp.Equal(nextUpdate.Truncate(time.Second)) {
			t.Errorf("%s: Expires %q, nextUpdate %v", what, h.Get("Expires"), nextUpdate)
		}
		if lm, err := http.ParseTime(h.Get("Last-Modified")); err != nil || !lm.Equal(thisUpdate.Truncate(time.Second)) {
			t.Errorf("%s: Last-Modified %q, thisUpdate %v", what, h.Get("Last-Modified"), thisUpdate)
		}
		etag := h.Get("ETag")
		if !strings.HasPrefix(etag, `"`) || len(etag) < 10 {
			t.Fatalf("%s: ETag %q", what, etag)
		}
		return etag
	}

	// OCSP over GET (RFC 6960 A.1), then the same with If-None-Match.
	ocspURL := strings.TrimSuffix(leaf.OCSPServer[0], "/") + "/" + base64.StdEncoding.EncodeToString(reqDER)
	resp, body := get(ocspURL, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("OCSP GET: %d %s", resp.StatusCode, body)
	}
	or, err := ocsp.ParseResponseForCert(body, leaf, issuer)
	if err != nil || or.Status != ocsp.Good {
		t.Fatalf("OCSP response: %v status %v", err, or)
	}
	etag := checkCaching("OCSP", resp, or.ThisUpdate, or.NextUpdate)
	if resp, body := get(ocspURL, etag); resp.StatusCode != http.StatusNotModified || len(body) != 0 {
		t.Errorf("OCSP GET with If-None-Match: %d, %d bytes; want 304", resp.StatusCode, len(body))
	}
	if resp, _ := get(ocspURL, `"other"`); resp.StatusCode != http.StatusOK {
		t.Errorf("OCSP GET with a stale ETag: %d, want 200", resp.StatusCode)
	}

	// CRL at the CDP.
	resp, body = get(leaf.CRLDistributionPoints[0], "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CRL: %d %s", resp.StatusCode, body)
	}
	crl, err := x509.ParseRevocationList(body)
	if err != nil {
		t.Fatal(err)
	}
	crlTag := checkCaching("CRL", resp, crl.ThisUpdate, crl.NextUpdate)
	if resp, body := get(leaf.CRLDistributionPoints[0], crlTag); resp.StatusCode != http.StatusNotModified || len(body) != 0 {
		t.Errorf("CRL with If-None-Match: %d, %d bytes; want 304", resp.StatusCode, len(body))
	}
	// A revocation makes a new CRL with a new ETag.
	if _, stderr, code := d.cli(t, "ca", "revoke", "--reason", "keyCompromise", leaf.SerialNumber.Text(16)); code != 0 {
		t.Fatalf("revoke: %s", stderr)
	}
	if resp, _ := get(leaf.CRLDistributionPoints[0], crlTag); resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") == crlTag {
		t.Errorf("CRL after a revocation: %d, ETag %q (was %q)", resp.StatusCode, resp.Header.Get("ETag"), crlTag)
	}

	// A nonce is echoed (openssl checks it and warns when it is missing),
	// and such a response is not cacheable.
	issuerPath, chainPath := filepath.Join(dir, "issuer.pem"), filepath.Join(dir, "chain.pem")
	if err := os.WriteFile(issuerPath, pem.EncodeToMemory(blk), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(chainPath, []byte(chain), 0o644); err != nil {
		t.Fatal(err)
	}
	reqFile := filepath.Join(dir, "nonce.req")
	run(t, "openssl", "ocsp", "-issuer", issuerPath, "-cert", certPath, "-nonce", "-reqout", reqFile)
	got := run(t, "openssl", "ocsp", "-issuer", issuerPath, "-cert", certPath, "-nonce", "-url", leaf.OCSPServer[0],
		"-CAfile", filepath.Join(d.dataDir, "ca.pem"), "-verify_other", chainPath, "-resp_text")
	if !strings.Contains(got, "OCSP Nonce") || strings.Contains(got, "no nonce in response") || !strings.Contains(got, "Response verify OK") || !strings.Contains(got, ": revoked") {
		t.Errorf("openssl ocsp -nonce:\n%s", got)
	}
	nonceReq, err := os.ReadFile(reqFile)
	if err != nil {
		t.Fatal(err)
	}
	presp, err := http.Post(leaf.OCSPServer[0], "application/ocsp-request", bytes.NewReader(nonceReq))
	if err != nil {
		t.Fatal(err)
	}
	presp.Body.Close()
	if cc := presp.Header.Get("Cache-Control"); cc != "no-store" || presp.Header.Get("ETag") != "" {
		t.Errorf("nonce response: Cache-Control %q, ETag %q; want no-store and none", cc, presp.Header.Get("ETag"))
	}
	// Garbage is malformedRequest and counted so.
	if presp, err := http.Post(leaf.OCSPServer[0], "application/ocsp-request", strings.NewReader("garbage")); err == nil {
		presp.Body.Close()
	}

	m := ux2Scrape(t, d)
	for _, c := range []struct {
		name, result string
		min          float64
	}{
		{"sigil_ocsp_requests_total", "good", 3},
		{"sigil_ocsp_requests_total", "revoked", 2},
		{"sigil_ocsp_requests_total", "malformed", 1},
		{"sigil_crl_requests_total", "ok", 2},
		{"sigil_crl_requests_total", "not_modified", 1},
	} {
		if v := ux2MustMetric(t, m, c.name, `result="`+c.result+`"`); v < c.min {
			t.Errorf("%s{result=%q} = %v, want at least %v", c.name, c.result, v, c.min)
		}
	}
}
