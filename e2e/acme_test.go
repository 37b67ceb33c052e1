package e2e

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startTestDNS answers A queries for every name under zone with 127.0.0.1,
// so the ACME validation authority reaches the clients on this machine.
func startTestDNS(t *testing.T, zone string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(zone, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestCertbotAgainstSigil enrolls with the Debian certbot over http-01
// against the built binary, as an operator would.
func TestCertbotAgainstSigil(t *testing.T) {
	needOpenSSL(t)
	certbot, err := exec.LookPath("certbot")
	if err != nil {
		t.Fatal("certbot not found: run scripts/deps.sh (as root: apt-get install -y certbot)")
	}
	dir := t.TempDir()
	resolver := startTestDNS(t, "example.test.")
	_, portStr, _ := net.SplitHostPort(freeAddr(t))
	// certbot registers without EAB: open the directory explicitly rather
	// than lean on dev mode's open default. Its challenge answers on
	// 127.0.0.1, which dev mode lets validation reach.
	cfg := filepath.Join(dir, "sigil.yaml")
	if err := os.WriteFile(cfg, []byte("acme:\n  provisioners:\n    - {name: default, require_eab: false}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDev(t, filepath.Join(dir, "data"), "--config", cfg, "--acme-dns-resolver", resolver, "--acme-http01-port", portStr)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	port, _ := strconv.Atoi(portStr)
	cmd := exec.CommandContext(ctx, certbot, "certonly", "--standalone", "--http-01-port", strconv.Itoa(port), "--http-01-address", "127.0.0.1",
		"--server", "https://"+d.httpsAddr+"/acme/directory", "-d", "web.example.test", "-d", "www.example.test",
		"--config-dir", filepath.Join(dir, "c"), "--work-dir", filepath.Join(dir, "w"), "--logs-dir", filepath.Join(dir, "l"),
		"-n", "--agree-tos", "--register-unsafely-without-email", "--key-type", "ecdsa", "--cert-name", "sigil")
	cmd.Env = append(os.Environ(), "REQUESTS_CA_BUNDLE="+filepath.Join(d.dataDir, "ca.pem"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("certbot: %v\n%s\nserver stderr:\n%s", err, out, d.stderr.String())
	}
	live := filepath.Join(dir, "c", "live", "sigil")
	got := run(t, "openssl", "verify", "-CAfile", filepath.Join(d.dataDir, "ca.pem"), "-untrusted", filepath.Join(live, "chain.pem"), filepath.Join(live, "cert.pem"))
	if !strings.Contains(got, ": OK") {
		t.Fatalf("openssl verify: %s", got)
	}
	text := run(t, "openssl", "x509", "-in", filepath.Join(live, "cert.pem"), "-noout", "-ext", "subjectAltName")
	if !strings.Contains(text, "web.example.test") || !strings.Contains(text, "www.example.test") {
		t.Errorf("certificate names: %s", text)
	}

	out, stderr, code := d.cli(t, "acme", "accounts", "list", "--format", "json")
	var accts []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &accts) != nil || len(accts) != 1 {
		t.Fatalf("acme accounts list: %s %s", out, stderr)
	}
	out, stderr, code = d.cli(t, "acme", "eab", "create", "--description", "team-a", "--format", "json")
	var eab struct {
		KeyID   string `json:"key_id"`
		HMACKey string `json:"hmac_key"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &eab) != nil || eab.KeyID == "" || len(eab.HMACKey) < 32 {
		t.Fatalf("acme eab create: %s %s", out, stderr)
	}
	out, stderr, code = d.cli(t, "acme", "eab", "create", "--wrap-ttl", "5m", "--format", "json")
	var w struct {
		WrapToken string `json:"wrap_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &w) != nil || w.WrapToken == "" || strings.Contains(out, "hmac_key") {
		t.Fatalf("acme eab create --wrap-ttl: %s %s", out, stderr)
	}
	if out, stderr, code := d.cli(t, "unwrap", w.WrapToken, "--format", "json"); code != 0 || !strings.Contains(out, "hmac_key") {
		t.Fatalf("unwrap EAB key: %s %s", out, stderr)
	}
	out, _, _ = d.cli(t, "acme", "eab", "list")
	if !strings.Contains(out, eab.KeyID) || strings.Contains(out, eab.HMACKey) {
		t.Errorf("eab list must show the key id and never the HMAC key: %s", out)
	}
}
