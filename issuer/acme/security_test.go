package acme

import (
	"database/sql"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
	"github.com/sigil-ca/sigil/issuer/validation"
)

// nonceRows counts the nonce table directly: nonces handed out must not
// cost a row; only used ones are recorded, until they expire.
func nonceRows(t *testing.T, e *env) int {
	t.Helper()
	db, ok := e.store.(interface{ DB() *sql.DB })
	if !ok {
		t.Fatalf("%T exposes no *sql.DB", e.store)
	}
	var n int
	if err := db.DB().QueryRowContext(t.Context(), `SELECT count(*) FROM acme_nonces`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestClosedByDefault(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	for _, tc := range []struct {
		dir      string
		required bool
	}{{e.base + "/directory", false}, {e.base + "/corp/directory", true}} {
		var d struct {
			Meta struct {
				ExternalAccountRequired bool `json:"externalAccountRequired"`
			} `json:"meta"`
		}
		e.get(tc.dir).json(t, &d)
		if d.Meta.ExternalAccountRequired != tc.required {
			t.Errorf("%s: externalAccountRequired %v, want %v", tc.dir, d.Meta.ExternalAccountRequired, tc.required)
		}
	}
	// A provisioner configured without Open requires EAB, and a zero
	// provisioner refuses IP identifiers.
	s := newSigner(t)
	wantProblem(t, e.post(s, e.base+"/corp/new-account", map[string]any{"termsOfServiceAgreed": true}), 401, "externalAccountRequired")
}

// TestNewOrderRefusesUnvalidatableIPs: with the real VA's address policy,
// IP identifiers it would never connect to are rejected at newOrder, even
// on a provisioner allowing any IP.
func TestNewOrderRefusesUnvalidatableIPs(t *testing.T) {
	va, err := validation.New(validation.Config{})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, va, nil)
	s := newSigner(t)
	e.register(s, e.base)
	for _, ip := range []string{"127.0.0.1", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1", "fd00:ec2::254"} {
		p := wantProblem(t, e.post(s, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "ip", Value: ip}}}), 400, "rejectedIdentifier")
		if p.Identifier == nil || p.Identifier.Value != ip {
			t.Errorf("%s: problem %+v", ip, p)
		}
	}
	if r := e.post(s, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "ip", Value: "10.0.0.7"}}}); r.status != http.StatusCreated {
		t.Fatalf("private address refused: %d %s", r.status, r.body)
	}
}

func TestRateLimits(t *testing.T) {
	e := newEnv(t, &fakeVA{}, func(c *Config) {
		c.RateLimits = RateLimits{NewNonce: Rate{PerSecond: 0.5, Burst: 5}, NewAccount: Rate{PerSecond: 0.1, Burst: 3}, NewOrder: Rate{PerSecond: 0.1, Burst: 2}}
	})
	rows := nonceRows(t, e)
	for i := range 5 {
		if r := e.get(e.base + "/new-nonce"); r.status != http.StatusNoContent {
			t.Fatalf("nonce %d: %d", i, r.status)
		}
	}
	r := e.get(e.base + "/new-nonce")
	p := wantProblem(t, r, 429, "rateLimited")
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 2 { // one token at 0.5/s: 2 s at most
		t.Fatalf("Retry-After %q (%v), problem %+v", r.header.Get("Retry-After"), err, p)
	}
	if got := nonceRows(t, e); got != rows {
		t.Fatalf("handing out nonces grew the nonce table from %d to %d rows", rows, got)
	}
	// newAccount: a nonce from a response header (the endpoint is
	// limited, every response still carries one).
	hdrNonce := r.header.Get("Replay-Nonce")
	var first *signer // registered within the limit; orders below
	for i := range 4 {
		s := newSigner(t)
		u := e.base + "/new-account"
		r := e.postRaw(u, s.sign(t, []byte(`{"termsOfServiceAgreed":true}`), u, hdrNonce, nil))
		hdrNonce = r.header.Get("Replay-Nonce")
		if i < 3 && r.status != http.StatusCreated {
			t.Fatalf("account %d: %d %s", i, r.status, r.body)
		}
		if i == 0 {
			s.kid, first = r.header.Get("Location"), s
		}
		if i == 3 {
			wantProblem(t, r, 429, "rateLimited")
			if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 1 || ra > 10 {
				t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
			}
		}
	}
	// newOrder, with an account registered before the limit.
	s := first
	for i := range 3 {
		u := e.base + "/new-order"
		r := e.postRaw(u, s.sign(t, []byte(`{"identifiers":[{"type":"dns","value":"o.example.test"}]}`), u, hdrNonce, nil))
		hdrNonce = r.header.Get("Replay-Nonce")
		if i < 2 && r.status != http.StatusCreated {
			t.Fatalf("order %d: %d %s", i, r.status, r.body)
		}
		if i == 2 {
			wantProblem(t, r, 429, "rateLimited")
		}
	}
	// Another client address has its own buckets.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, e.base+"/new-nonce", nil)
	req.RemoteAddr = "192.0.2.9:4000"
	e.srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusNoContent {
		t.Fatalf("other address: %d", rec.Code)
	}
}

// restart closes e's server and starts a new one over the same database
// and barrier, as a restarted process; it returns the new server.
func restart(t *testing.T, e *env) *httptest.Server {
	t.Helper()
	e.srv.Close()
	restarted, err := New(e.srv.cfg, Deps{CA: e.ca, VA: &fakeVA{}, Store: e.store, Sealer: e.sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restarted.Close() })
	ts := httptest.NewTLSServer(restarted.Handler())
	t.Cleanup(ts.Close)
	return ts
}

// TestNoncesSurviveRestartOnce: a nonce minted before a restart (a new
// Server over the same database and barrier) is accepted once after it,
// and a replay is refused, by the restarted node and by the old one.
func TestNoncesSurviveRestartOnce(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	s := newSigner(t)
	e.register(s, e.base)
	n := e.nonce()
	u := e.base + "/new-order"
	body := s.sign(t, []byte(`{"identifiers":[{"type":"dns","value":"r.example.test"}]}`), u, n, nil)
	ts := restart(t, e)
	rows := nonceRows(t, e)
	if r := e.postRaw(ts.URL+"/acme/new-order", body); r.status != http.StatusCreated {
		t.Fatalf("restarted node refused a nonce from before the restart: %d %s", r.status, r.body)
	}
	if got := nonceRows(t, e); got != rows+1 {
		t.Fatalf("used nonce rows %d -> %d, want +1", rows, got)
	}
	wantProblem(t, e.postRaw(ts.URL+"/acme/new-order", body), 400, "badNonce")
	wantProblem(t, e.postRaw(u, body), 400, "badNonce")

	// Forged, truncated and expired nonces.
	forged := []byte(n)
	forged[len(forged)-3] ^= 1
	for _, bad := range []string{string(forged), n[:20], "AAAA"} {
		wantProblem(t, e.postRaw(u, s.sign(t, []byte(`{}`), u, bad, nil)), 400, "badNonce")
	}
	old := e.nonce()
	e.srv.cfg.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	wantProblem(t, e.postRaw(u, s.sign(t, []byte(`{"identifiers":[{"type":"dns","value":"x.example.test"}]}`), u, old, nil)), 400, "badNonce")
}

// TestCAARecheckAtFinalize validates through the real VA against a real
// DNS server while CAA permits Sigil, then publishes CAA naming another CA.
// Finalize within 8 hours of validation issues (the BR window); past it,
// CAA is checked again and finalize is refused with a caa problem and
// nothing issued.
func TestCAARecheckAtFinalize(t *testing.T) {
	zone := &testDNS{txt: map[string][]string{}, caa: map[string][]*dns.CAA{
		"example.test.": {{Tag: "issue", Value: "sigil.test"}},
	}}
	dnsAddr := startTestDNS(t, zone)
	va, err := validation.New(validation.Config{DNSResolver: dnsAddr, CAAIdentities: []string{"sigil.test"}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	e := newEnv(t, va, func(c *Config) { c.Now = func() time.Time { return time.Unix(0, now.Load()) } })
	s := newSigner(t)
	e.register(s, e.base)
	thumb, err := ra.Thumbprint(s.jwk())
	if err != nil {
		t.Fatal(err)
	}
	order := func(name string) orderResp {
		t.Helper()
		_, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: name}}})
		var az authzResp
		e.post(s, o.Authorizations[0], nil).json(t, &az)
		for _, c := range az.Challenges {
			if c.Type == validation.DNS01 && az.Status == "pending" {
				zone.mu.Lock()
				zone.txt["_acme-challenge."+name+"."] = []string{validation.KeyAuthorizationDigest(c.Token + "." + thumb)}
				zone.mu.Unlock()
			}
		}
		if azs := e.validate(s, o, validation.DNS01); azs[0].Status != "valid" {
			t.Fatalf("authz %+v", azs[0])
		}
		return o
	}
	fresh, stale := order("fresh.example.test"), order("stale.example.test")
	// The domain owner now allows only another CA.
	zone.mu.Lock()
	zone.caa["example.test."] = []*dns.CAA{{Tag: "issue", Value: "other-ca.test"}}
	zone.mu.Unlock()

	before := len(listAllCerts(t, e))
	now.Add(int64(7 * time.Hour))
	if r := e.post(s, fresh.Finalize, map[string]any{"csr": b64(csrDER(t, []string{"fresh.example.test"}, nil))}); r.status != http.StatusOK {
		t.Fatalf("finalize within 8 hours of validation: %d %s", r.status, r.body)
	}
	now.Add(int64(2 * time.Hour)) // 9 hours after validation
	p := wantProblem(t, e.post(s, stale.Finalize, map[string]any{"csr": b64(csrDER(t, []string{"stale.example.test"}, nil))}), 403, "caa")
	if p.Identifier == nil || p.Identifier.Value != "stale.example.test" {
		t.Fatalf("problem %+v", p)
	}
	if n := len(listAllCerts(t, e)); n != before+1 {
		t.Fatalf("%d certificates issued, want 1 (the fresh order only)", n-before)
	}
	// A new order reuses the valid authorization, and is rechecked too.
	_, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "stale.example.test"}}})
	if o.Status != "ready" {
		t.Fatalf("order with a reused authorization: %+v", o)
	}
	wantProblem(t, e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, []string{"stale.example.test"}, nil))}), 403, "caa")
	// CAA allows Sigil again: the recheck passes.
	zone.mu.Lock()
	zone.caa["example.test."] = []*dns.CAA{{Tag: "issue", Value: "sigil.test"}}
	zone.mu.Unlock()
	_, o = e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "stale.example.test"}}})
	if r := e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, []string{"stale.example.test"}, nil))}); r.status != http.StatusOK {
		t.Fatalf("finalize after CAA allows again: %d %s", r.status, r.body)
	}
}

// TestLocalNoncesStayInTheProcess: with SingleNode (the embedded store's
// one server), POSTs record no nonce rows; a nonce is accepted once by the
// server that minted it, and refused by a restarted server (a new Server
// over the same database and barrier), which the client gets past by
// taking the fresh nonce of the badNonce answer (RFC 8555 §6.5).
func TestLocalNoncesStayInTheProcess(t *testing.T) {
	e := newEnv(t, &fakeVA{}, func(c *Config) { c.SingleNode = true })
	s := newSigner(t)
	e.register(s, e.base)
	rows := nonceRows(t, e)
	u := e.base + "/new-order"
	order := func(nonce, name string) []byte {
		return s.sign(t, []byte(`{"identifiers":[{"type":"dns","value":"`+name+`"}]}`), u, nonce, nil)
	}
	before := order(e.nonce(), "a.example.test")
	if r := e.postRaw(u, before); r.status != http.StatusCreated {
		t.Fatalf("new order: %d %s", r.status, r.body)
	}
	wantProblem(t, e.postRaw(u, before), 400, "badNonce")
	unused := e.nonce()

	ts := restart(t, e)
	r := e.postRaw(ts.URL+"/acme/new-order", order(unused, "b.example.test"))
	wantProblem(t, r, 400, "badNonce")
	fresh := r.header.Get("Replay-Nonce")
	if fresh == "" {
		t.Fatal("badNonce answer without a Replay-Nonce")
	}
	if r := e.postRaw(ts.URL+"/acme/new-order", order(fresh, "b.example.test")); r.status != http.StatusCreated {
		t.Fatalf("retry with the restarted server's nonce: %d %s", r.status, r.body)
	}
	if got := nonceRows(t, e); got != rows {
		t.Fatalf("local nonces: nonce rows %d -> %d, want no change", rows, got)
	}
}
