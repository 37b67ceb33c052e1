package e2e

// Replays of the ACME findings of the December 2026 security review (#5,
// #6, #11) against the built binary, with a real ACME client
// (golang.org/x/crypto/acme, as the review used) or raw JWS requests.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/miekg/dns"
	xacme "golang.org/x/crypto/acme"
	_ "modernc.org/sqlite" // read the dev server's nonce table
)

// acmeAttackSecret stands for instance-role credentials behind a metadata
// or internal service.
const acmeAttackSecret = `{"AccessKeyId":"AKIAINTERNALSECRET","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"}`

// acmeAttackHostIP is an address of this machine that is neither loopback
// nor link-local: a production VA may connect to it (as to any host on a
// private network), so the first hop of the attack is an allowed one.
func acmeAttackHostIP(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var v6 net.IP
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.IsLoopback() || n.IP.IsLinkLocalUnicast() || n.IP.IsMulticast() {
			continue
		}
		if n.IP.To4() != nil {
			return n.IP.To4()
		}
		if v6 == nil {
			v6 = n.IP
		}
	}
	if v6 == nil {
		t.Fatal("this machine has no non-loopback, non-link-local address to serve the challenge from")
	}
	return v6
}

// acmeAttackDNS answers A or AAAA with ip for every name under zone.
func acmeAttackDNS(t *testing.T, zone string, ip net.IP) string {
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
			hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 0}
			switch {
			case q.Qtype == dns.TypeA && ip.To4() != nil:
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip})
			case q.Qtype == dns.TypeAAAA && ip.To4() == nil:
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
			}
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// acmeAttackServe serves h on addr until the test ends.
func acmeAttackServe(t *testing.T, l net.Listener, h http.Handler) {
	t.Helper()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
}

// acmeAttackPorts finds a port free both on hostIP (the attacker's
// challenge server) and on 127.0.0.1 (the internal service), since
// validation follows redirects only to the http-01 port.
func acmeAttackPorts(t *testing.T, hostIP net.IP) (challenge, internal net.Listener, port int) {
	t.Helper()
	for range 20 {
		cl, err := net.Listen("tcp", net.JoinHostPort(hostIP.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		port = cl.Addr().(*net.TCPAddr).Port
		il, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			return cl, il, port
		}
		cl.Close()
	}
	t.Fatal("no port free on both addresses")
	return nil, nil, 0
}

// acmeAttackProduction starts a production (non-dev) server, initialises
// it with one unseal share and a CA, and returns it with an HTTP client
// trusting its listener.
func acmeAttackProduction(t *testing.T, extra ...string) (*devServer, *http.Client) {
	t.Helper()
	dir := t.TempDir()
	listenerCA, cert, key := listenerTLS(t, dir)
	d := startServer(t, filepath.Join(dir, "data"), false, listenerCA, append([]string{"--tls-cert", cert, "--tls-key", key}, extra...)...)
	out, stderr, code := d.cli(t, "operator", "init", "--shares", "1", "--threshold", "1", "--format", "json")
	var initResp struct {
		RootToken string `json:"root_token"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &initResp) != nil {
		t.Fatalf("operator init: %s", stderr)
	}
	d.exports["SIGIL_TOKEN"] = initResp.RootToken
	if _, stderr, code := d.cli(t, "ca", "init", "--common-name", "ACME Attack Test CA"); code != 0 {
		t.Fatalf("ca init: %s", stderr)
	}
	return d, d.httpClient(t)
}

// acmeAttackEAB creates an EAB key through the CLI.
func acmeAttackEAB(t *testing.T, d *devServer) *xacme.ExternalAccountBinding {
	t.Helper()
	out, stderr, code := d.cli(t, "acme", "eab", "create", "--description", "attack test", "--format", "json")
	var k struct {
		KeyID   string `json:"key_id"`
		HMACKey string `json:"hmac_key"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &k) != nil {
		t.Fatalf("acme eab create: %s %s", out, stderr)
	}
	hk, err := base64.RawURLEncoding.DecodeString(k.HMACKey)
	if err != nil {
		t.Fatal(err)
	}
	return &xacme.ExternalAccountBinding{KID: k.KeyID, Key: hk}
}

func acmeAttackClient(t *testing.T, d *devServer, hc *http.Client) *xacme.Client {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &xacme.Client{Key: k, HTTPClient: hc, DirectoryURL: "https://" + d.httpsAddr + "/acme/directory"}
}

// TestAttackACMEProduction replays findings #6 and #5 against a production
// server: the directory is closed (EAB required, no IP identifiers), and
// an EAB-holding client whose http-01 answer redirects to an internal
// service (loopback, or the cloud metadata address) gets neither the
// request made nor the body back.
func TestAttackACMEProduction(t *testing.T) {
	hostIP := acmeAttackHostIP(t)
	challengeL, internalL, port := acmeAttackPorts(t, hostIP)
	resolver := acmeAttackDNS(t, "example.test.", hostIP)
	d, hc := acmeAttackProduction(t, "--acme-http01-port", strconv.Itoa(port), "--acme-dns-resolver", resolver)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The internal service the attacker wants read.
	var internalHits atomic.Int32
	acmeAttackServe(t, internalL, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1)
		_, _ = io.WriteString(w, acmeAttackSecret)
	}))
	// The attacker's challenge server: each name answers its own way.
	acmeAttackServe(t, challengeL, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		switch {
		case strings.HasPrefix(host, "loop."):
			http.Redirect(w, r, fmt.Sprintf("http://127.0.0.1:%d/latest/meta-data/iam/security-credentials/role", port), http.StatusFound)
		case strings.HasPrefix(host, "meta."):
			http.Redirect(w, r, fmt.Sprintf("http://169.254.169.254:%d/latest/meta-data/iam/security-credentials/role", port), http.StatusFound)
		default: // the body itself is the secret: it must not be echoed
			_, _ = io.WriteString(w, acmeAttackSecret)
		}
	}))

	t.Run("DirectoryRequiresEAB", func(t *testing.T) {
		resp, err := hc.Get("https://" + d.httpsAddr + "/acme/directory")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var dir struct {
			Meta map[string]any `json:"meta"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&dir); err != nil {
			t.Fatal(err)
		}
		if dir.Meta["externalAccountRequired"] != true {
			t.Fatalf("production directory meta %v: externalAccountRequired is not true", dir.Meta)
		}
	})
	t.Run("NewAccountWithoutEABRefused", func(t *testing.T) {
		c := acmeAttackClient(t, d, hc)
		_, err := c.Register(ctx, &xacme.Account{}, xacme.AcceptTOS)
		var ae *xacme.Error
		if !errors.As(err, &ae) || ae.ProblemType != "urn:ietf:params:acme:error:externalAccountRequired" {
			t.Fatalf("registration without EAB: %v", err)
		}
	})

	c := acmeAttackClient(t, d, hc)
	if _, err := c.Register(ctx, &xacme.Account{ExternalAccountBinding: acmeAttackEAB(t, d)}, xacme.AcceptTOS); err != nil {
		t.Fatalf("registration with EAB: %v", err)
	}
	t.Run("IPIdentifiersRefused", func(t *testing.T) {
		for _, ip := range []string{"127.0.0.1", hostIP.String()} {
			_, err := c.AuthorizeOrder(ctx, xacme.IPIDs(ip))
			var ae *xacme.Error
			if !errors.As(err, &ae) || ae.ProblemType != "urn:ietf:params:acme:error:rejectedIdentifier" {
				t.Fatalf("order for ip:%s: %v", ip, err)
			}
		}
	})

	// http-01 for name through the real client; returns the failure.
	validate := func(t *testing.T, name string) error {
		t.Helper()
		o, err := c.AuthorizeOrder(ctx, xacme.DomainIDs(name))
		if err != nil {
			t.Fatal(err)
		}
		az, err := c.GetAuthorization(ctx, o.AuthzURLs[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range az.Challenges {
			if ch.Type != "http-01" {
				continue
			}
			if _, err := c.Accept(ctx, ch); err != nil {
				t.Fatal(err)
			}
			_, err := c.WaitAuthorization(ctx, az.URI)
			if err == nil {
				t.Fatalf("%s: authorization became valid", name)
			}
			return err
		}
		t.Fatalf("%s: no http-01 challenge", name)
		return nil
	}
	for _, tc := range []struct {
		name, host, want string
	}{
		{"RedirectToLoopbackRefused", "loop.example.test", "127.0.0.1 is loopback"},
		{"RedirectToMetadataRefused", "meta.example.test", "169.254.169.254 is a cloud metadata address"},
		{"BodyNotEchoed", "echo.example.test", fmt.Sprintf("does not match (%d bytes received)", len(acmeAttackSecret))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validate(t, tc.host)
			msg := err.Error()
			t.Logf("authorization error: %s", msg)
			if strings.Contains(msg, "AKIA") || strings.Contains(msg, "SECRETKEY") {
				t.Fatalf("the internal response reached the ACME client: %s", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q does not say %q", msg, tc.want)
			}
		})
	}
	if n := internalHits.Load(); n != 0 {
		t.Fatalf("validation fetched the internal service %d times", n)
	}
}

// acmeAttackJWS signs ACME requests by hand (x/crypto/acme retries 429
// responses itself, so a burst needs raw requests).
type acmeAttackJWS struct{ key crypto.Signer }

func (a acmeAttackJWS) sign(t *testing.T, payload, url, nonce string) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: a.key},
		&jose.SignerOptions{EmbedJWK: true, ExtraHeaders: map[jose.HeaderKey]any{"url": url, "nonce": nonce}})
	if err != nil {
		t.Fatal(err)
	}
	j, err := s.Sign([]byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return j.FullSerialize()
}

func acmeAttackNewKey(t *testing.T) acmeAttackJWS {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return acmeAttackJWS{key: k}
}

func acmeAttackPost(t *testing.T, hc *http.Client, url, body string) (*http.Response, string) {
	t.Helper()
	resp, err := hc.Post(url, "application/jose+json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// acmeAttackNonceRows counts the dev server's nonce table.
func acmeAttackNonceRows(t *testing.T, dataDir string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "sigil.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM acme_nonces`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// acmeAttackRetryAfter checks a 429 rateLimited answer and its Retry-After.
func acmeAttackRetryAfter(t *testing.T, resp *http.Response, body string, maxSecs int) {
	t.Helper()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "urn:ietf:params:acme:error:rateLimited") {
		t.Fatalf("status %d body %s, want 429 rateLimited", resp.StatusCode, body)
	}
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > maxSecs {
		t.Fatalf("Retry-After %q, want 1..%d seconds", resp.Header.Get("Retry-After"), maxSecs)
	}
}

// TestAttackACMEUnauthenticatedFlood replays finding #11 against a dev
// server: a burst of newAccount and newNonce from one address is answered
// 429 with Retry-After, and handing out nonces adds no rows.
func TestAttackACMEUnauthenticatedFlood(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	d := startDev(t, dataDir)
	hc := d.httpClient(t)
	base := "https://" + d.httpsAddr + "/acme"

	resp, err := hc.Head(base + "/new-nonce")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	nonce := resp.Header.Get("Replay-Nonce")
	t.Run("NewAccountBurst", func(t *testing.T) {
		for i := range 60 {
			resp, body := acmeAttackPost(t, hc, base+"/new-account", acmeAttackNewKey(t).sign(t, `{"termsOfServiceAgreed":true}`, base+"/new-account", nonce))
			nonce = resp.Header.Get("Replay-Nonce")
			switch resp.StatusCode {
			case http.StatusCreated:
			case http.StatusTooManyRequests:
				acmeAttackRetryAfter(t, resp, body, 60)
				t.Logf("newAccount limited after %d accounts", i)
				return
			default:
				t.Fatalf("new-account %d: %d %s", i, resp.StatusCode, body)
			}
		}
		t.Fatal("60 new accounts from one address in a burst were all created")
	})
	t.Run("NewNonceBurst", func(t *testing.T) {
		rows := acmeAttackNonceRows(t, dataDir)
		defer func() {
			if got := acmeAttackNonceRows(t, dataDir); got != rows {
				t.Errorf("handing out nonces grew the nonce table from %d to %d rows", rows, got)
			}
		}()
		for i := range 400 {
			resp, err := hc.Get(base + "/new-nonce")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusNoContent:
			case http.StatusTooManyRequests:
				acmeAttackRetryAfter(t, resp, string(body), 5)
				t.Logf("newNonce limited after %d nonces", i)
				return
			default:
				t.Fatalf("new-nonce %d: %d %s", i, resp.StatusCode, body)
			}
		}
		t.Error("400 new nonces from one address in a burst were all served")
	})
}

// TestAttackACMENonceRestart: on the embedded store (one server per
// data directory) nonces are the process's own: a nonce handed out before
// a restart is refused after it with badNonce and a fresh Replay-Nonce,
// the client's retry with that one succeeds, and its replay is refused.
// No POST writes a nonce row. (Nonces shared by nodes on PostgreSQL, which
// survive restarts, are tested in issuer/acme/wfe and TestHAPostgresRestart.)
func TestAttackACMENonceRestart(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	d := startDev(t, dataDir)
	hc := d.httpClient(t)
	resp, err := hc.Head("https://" + d.httpsAddr + "/acme/new-nonce")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	nonce := resp.Header.Get("Replay-Nonce")
	d.stop(t)

	d = startDev(t, dataDir)
	hc = d.httpClient(t)
	u := "https://" + d.httpsAddr + "/acme/new-account"
	key := acmeAttackNewKey(t)
	resp, b := acmeAttackPost(t, hc, u, key.sign(t, `{"termsOfServiceAgreed":true}`, u, nonce))
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(b, "badNonce") {
		t.Fatalf("nonce from before the restart: %d %s, want badNonce", resp.StatusCode, b)
	}
	fresh := resp.Header.Get("Replay-Nonce")
	if fresh == "" {
		t.Fatal("badNonce answer without a Replay-Nonce")
	}
	body := key.sign(t, `{"termsOfServiceAgreed":true}`, u, fresh)
	if resp, b := acmeAttackPost(t, hc, u, body); resp.StatusCode != http.StatusCreated {
		t.Fatalf("retry with the fresh nonce: %d %s", resp.StatusCode, b)
	}
	if resp, b := acmeAttackPost(t, hc, u, body); resp.StatusCode != http.StatusBadRequest || !strings.Contains(b, "badNonce") {
		t.Fatalf("replayed nonce: %d %s", resp.StatusCode, b)
	}
	d.stop(t)
	if n := acmeAttackNonceRows(t, dataDir); n != 0 {
		t.Fatalf("%d nonce rows written on the embedded store, want 0", n)
	}
}
