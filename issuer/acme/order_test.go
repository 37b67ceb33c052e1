package acme

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

type orderResp struct {
	Status         string       `json:"status"`
	Identifiers    []Identifier `json:"identifiers"`
	Authorizations []string     `json:"authorizations"`
	Finalize       string       `json:"finalize"`
	Certificate    string       `json:"certificate"`
	Profile        string       `json:"profile"`
	Error          *Problem     `json:"error"`
}

type authzResp struct {
	Status     string     `json:"status"`
	Identifier Identifier `json:"identifier"`
	Wildcard   bool       `json:"wildcard"`
	Challenges []struct {
		Type   string   `json:"type"`
		URL    string   `json:"url"`
		Token  string   `json:"token"`
		Status string   `json:"status"`
		Error  *Problem `json:"error"`
	} `json:"challenges"`
}

func (e *env) newOrder(s *signer, base string, payload map[string]any) (string, orderResp) {
	e.t.Helper()
	r := e.post(s, base+"/new-order", payload)
	if r.status != http.StatusCreated {
		e.t.Fatalf("new-order: %d %s", r.status, r.body)
	}
	var o orderResp
	r.json(e.t, &o)
	return r.header.Get("Location"), o
}

// validate answers chType for every authorization of the order and waits
// until each is no longer pending.
func (e *env) validate(s *signer, o orderResp, chType string) []authzResp {
	e.t.Helper()
	var out []authzResp
	for _, u := range o.Authorizations {
		var az authzResp
		e.post(s, u, nil).json(e.t, &az)
		if az.Status == "pending" {
			found := false
			for _, c := range az.Challenges {
				if c.Type == chType {
					found = true
					if r := e.post(s, c.URL, map[string]any{}); r.status != 200 {
						e.t.Fatalf("challenge: %d %s", r.status, r.body)
					}
				}
			}
			if !found {
				e.t.Fatalf("no %s challenge in %+v", chType, az)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for az.Status == "pending" && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			e.post(s, u, nil).json(e.t, &az)
		}
		out = append(out, az)
	}
	return out
}

func csrDER(t testing.TB, dns []string, ips []string) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestOrderFlow(t *testing.T) {
	va := &fakeVA{}
	e := newEnv(t, va, nil)
	s := newSigner(t)
	e.register(s, e.base)
	names := []string{"a.example.test", "b.example.test"}
	loc, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: names[0]}, {Type: "dns", Value: names[1]}, {Type: "ip", Value: "192.0.2.7"}}, "profile": "shortlived"})
	if o.Status != "pending" || len(o.Authorizations) != 3 || o.Profile != "shortlived" {
		t.Fatalf("order %+v", o)
	}
	// Finalizing early fails.
	wantProblem(t, e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, names, []string{"192.0.2.7"}))}), 403, "orderNotReady")
	azs := e.validate(s, o, validation.HTTP01)
	for _, az := range azs {
		if az.Status != "valid" {
			t.Fatalf("authz %+v", az)
		}
	}
	va.mu.Lock()
	reqs := slices.Clone(va.reqs)
	va.mu.Unlock()
	if len(reqs) != 3 || !strings.Contains(reqs[0].KeyAuthorization, ".") {
		t.Fatalf("VA requests %+v", reqs)
	}
	e.post(s, loc, nil).json(t, &o)
	if o.Status != "ready" {
		t.Fatalf("order after validation: %+v", o)
	}
	// A CSR with an extra name is refused and issues nothing.
	wantProblem(t, e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, append(names, "c.example.test"), []string{"192.0.2.7"}))}), 400, "badCSR")
	wantProblem(t, e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, names, nil))}), 400, "badCSR")
	// So is a CSR whose signature does not verify (the RA checks it once and
	// hands the CA the checked CSR), and the order stays ready.
	forged := csrDER(t, names, []string{"192.0.2.7"})
	forged[len(forged)-1] ^= 1
	if p := wantProblem(t, e.post(s, o.Finalize, map[string]any{"csr": b64(forged)}), 400, "badCSR"); !strings.Contains(p.Detail, "signature") {
		t.Fatalf("forged CSR: %+v", p)
	}

	// Two finalizes race: exactly one issues.
	csr := b64(csrDER(t, names, []string{"192.0.2.7"}))
	var wg sync.WaitGroup
	results := make([]*resp, 2)
	bodies := make([][]byte, 2)
	for i := range bodies {
		bodies[i] = s.sign(t, []byte(`{"csr":"`+csr+`"}`), o.Finalize, e.nonce(), nil)
	}
	for i := range results {
		wg.Go(func() { results[i] = e.postRaw(o.Finalize, bodies[i]) })
	}
	wg.Wait()
	ok := 0
	for _, r := range results {
		if r.status == 200 {
			ok++
		} else {
			wantProblem(t, r, 403, "orderNotReady")
		}
	}
	if ok != 1 {
		t.Fatalf("%d finalizes succeeded", ok)
	}
	e.post(s, loc, nil).json(t, &o)
	if o.Status != "valid" || o.Certificate == "" {
		t.Fatalf("order after finalize: %+v", o)
	}
	r := e.post(s, o.Certificate, nil)
	if r.status != 200 || r.header.Get("Content-Type") != "application/pem-certificate-chain" {
		t.Fatalf("cert: %d %s", r.status, r.body)
	}
	var certs []*x509.Certificate
	for rest := r.body; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.rootPool(), Intermediates: inter, DNSName: names[1]}); err != nil {
		t.Fatalf("chain: %v", err)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d > 8*24*time.Hour {
		t.Fatalf("shortlived profile gave %v", d)
	}
	// Another account cannot fetch it.
	other := newSigner(t)
	e.register(other, e.base)
	wantProblem(t, e.post(other, o.Certificate, nil), 404, "malformed")

	// ARI.
	id := CertID(leaf)
	ri := e.get(e.base + "/renewal-info/" + id)
	var info struct {
		SuggestedWindow struct{ Start, End time.Time } `json:"suggestedWindow"`
	}
	ri.json(t, &info)
	if ri.status != 200 || ri.header.Get("Retry-After") == "" || !info.SuggestedWindow.Start.After(leaf.NotBefore) || !info.SuggestedWindow.End.Before(leaf.NotAfter) {
		t.Fatalf("renewal info: %d %s", ri.status, ri.body)
	}
	// Renew with replaces; the other account cannot claim it; a second
	// replacement after the first finalizes is refused.
	wantProblem(t, e.post(other, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "dns", Value: names[0]}}, "replaces": id}), 403, "unauthorized")
	_, o2 := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: names[0]}, {Type: "dns", Value: names[1]}, {Type: "ip", Value: "192.0.2.7"}}, "replaces": id})
	if o2.Status != "ready" { // authorizations reused
		t.Fatalf("renewal order %+v", o2)
	}
	if r := e.post(s, o2.Finalize, map[string]any{"csr": b64(csrDER(t, names, []string{"192.0.2.7"}))}); r.status != 200 {
		t.Fatalf("renewal finalize: %d %s", r.status, r.body)
	}
	wantProblem(t, e.post(s, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "dns", Value: names[0]}}, "replaces": id}), 409, "alreadyReplaced")

	// Revocation: not by another account; by the owner; then again fails.
	rev := map[string]any{"certificate": b64(leaf.Raw), "reason": 4}
	wantProblem(t, e.post(other, e.base+"/revoke-cert", rev), 403, "unauthorized")
	wantProblem(t, e.post(s, e.base+"/revoke-cert", map[string]any{"certificate": b64(leaf.Raw), "reason": 7}), 400, "badRevocationReason")
	if r := e.post(s, e.base+"/revoke-cert", rev); r.status != 200 {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	wantProblem(t, e.post(s, e.base+"/revoke-cert", rev), 400, "alreadyRevoked")
	rec, err := e.ca.Get(t.Context(), leaf.SerialNumber.Text(16))
	if err != nil || rec.Status != "revoked" {
		t.Fatalf("CA record %+v %v", rec, err)
	}
	ri = e.get(e.base + "/renewal-info/" + id)
	ri.json(t, &info)
	if !info.SuggestedWindow.End.Before(time.Now().Add(time.Minute)) {
		t.Fatalf("revoked certificate's window not in the past: %s", ri.body)
	}
}

func TestValidationFailureAndIdentifiers(t *testing.T) {
	va := &fakeVA{fn: func(r validation.Request) error {
		return &validation.Error{Type: "incorrectResponse", Detail: "the key authorization does not match"}
	}}
	e := newEnv(t, va, nil)
	s := newSigner(t)
	e.register(s, e.base)
	loc, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "x.example.test"}}})
	azs := e.validate(s, o, validation.HTTP01)
	if azs[0].Status != "invalid" || azs[0].Challenges[0].Error == nil || azs[0].Challenges[0].Error.Type != ra.ErrorNS+"incorrectResponse" {
		t.Fatalf("authz %+v", azs[0])
	}
	e.post(s, loc, nil).json(t, &o)
	if o.Status != "invalid" {
		t.Fatalf("order %+v", o)
	}
	// Wildcards get dns-01 only.
	_, w := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "*.w.example.test"}}})
	var az authzResp
	e.post(s, w.Authorizations[0], nil).json(t, &az)
	if !az.Wildcard || len(az.Challenges) != 1 || az.Challenges[0].Type != "dns-01" || az.Identifier.Value != "w.example.test" {
		t.Fatalf("wildcard authz %+v", az)
	}
	// Identifier checks.
	wantProblem(t, e.post(s, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "email", Value: "a@b"}}}), 400, "unsupportedIdentifier")
	wantProblem(t, e.post(s, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "bad_name.test"}}}), 400, "rejectedIdentifier")
	wantProblem(t, e.post(s, e.base+"/new-order", map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "a.test"}}, "profile": "nope"}), 400, "invalidProfile")
	// Outside the provisioner's allowed names.
	k, _ := e.srv.CreateEAB(t.Context(), "corp", EABPolicy{})
	hk, _ := decodeB64(k.HMACKey)
	c := newSigner(t)
	u := e.base + "/corp/new-account"
	r := e.post(c, u, map[string]any{"externalAccountBinding": eabJWS(t, k.KeyID, hk, u, c.jwk())})
	c.kid = r.header.Get("Location")
	p := wantProblem(t, e.post(c, e.base+"/corp/new-order", map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "a.corp.test"}, {Type: "dns", Value: "evil.test"}, {Type: "ip", Value: "10.0.0.1"}}}), 400, "rejectedIdentifier")
	if len(p.Subproblems) != 2 {
		t.Fatalf("subproblems %+v", p.Subproblems)
	}
}

// TestAccountLifecycle runs with and without SingleNode (accounts cached
// in memory): every change an account or the operator makes is seen by
// the next request either way.
func TestAccountLifecycle(t *testing.T) {
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("SingleNode=%v", single), func(t *testing.T) { testAccountLifecycle(t, single) })
	}
}

func testAccountLifecycle(t *testing.T, single bool) {
	e := newEnv(t, &fakeVA{}, func(c *Config) { c.SingleNode = single })
	s := newSigner(t)
	u := e.base + "/new-account"
	wantProblem(t, e.post(s, u, map[string]any{"onlyReturnExisting": true}), 400, "accountDoesNotExist")
	wantProblem(t, e.post(s, u, map[string]any{"contact": []string{"tel:+1555"}}), 400, "unsupportedContact")
	wantProblem(t, e.post(s, u, map[string]any{"contact": []string{"mailto:a@b,c@d"}}), 400, "invalidContact")
	e.register(s, e.base)
	r := e.post(&signer{key: s.key, alg: s.alg}, u, map[string]any{"onlyReturnExisting": true})
	if r.status != 200 || r.header.Get("Location") != s.kid {
		t.Fatalf("existing: %d %s %s", r.status, r.header, r.body)
	}
	// Update contact, then read it back.
	r = e.post(s, s.kid, map[string]any{"contact": []string{"mailto:b@example.test"}})
	if r.status != 200 || !strings.Contains(string(r.body), "b@example.test") {
		t.Fatalf("update: %d %s", r.status, r.body)
	}
	if r := e.post(s, s.kid, nil); r.status != 200 || !strings.Contains(string(r.body), "b@example.test") {
		t.Fatalf("read after update: %d %s", r.status, r.body)
	}
	// Key rollover.
	nk := newSigner(t)
	kc := e.base + "/key-change"
	oldJWK, _ := s.jwk().MarshalJSON()
	inner := nk.sign(t, []byte(`{"account":"`+s.kid+`","oldKey":`+string(oldJWK)+`}`), kc, "", nil)
	r = e.postRaw(kc, s.sign(t, inner, kc, e.nonce(), nil))
	if r.status != 200 {
		t.Fatalf("key change: %d %s", r.status, r.body)
	}
	wantProblem(t, e.post(s, s.kid, nil), 400, "malformed") // old key no longer verifies
	nk.kid = s.kid
	if r := e.post(nk, s.kid, nil); r.status != 200 {
		t.Fatalf("new key: %d %s", r.status, r.body)
	}
	// Deactivate.
	if r := e.post(nk, nk.kid, map[string]any{"status": "deactivated"}); r.status != 200 {
		t.Fatalf("deactivate: %d %s", r.status, r.body)
	}
	wantProblem(t, e.post(nk, nk.kid, nil), 403, "unauthorized")

	// The operator deactivates an account in use.
	o := newSigner(t)
	e.register(o, e.base)
	if r := e.post(o, o.kid, nil); r.status != 200 {
		t.Fatalf("second account: %d %s", r.status, r.body)
	}
	if err := e.srv.DeactivateAccount(t.Context(), o.kid[strings.LastIndex(o.kid, "/")+1:]); err != nil {
		t.Fatal(err)
	}
	wantProblem(t, e.post(o, o.kid, nil), 403, "unauthorized")
	// Revoke by certificate key needs no account: covered in the lego test.
	n, err := e.srv.Prune(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = n
}

// TestSingleNodeCachesAccounts: with SingleNode a POST does not read its
// account from storage again, so a change written to the database by
// anything but this server (another node, which SingleNode rules out) is
// not seen; without it, it is at once. This is why SingleNode is set only
// for the embedded store, whose data directory one server locks.
func TestSingleNodeCachesAccounts(t *testing.T) {
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("SingleNode=%v", single), func(t *testing.T) {
			e := newEnv(t, &fakeVA{}, func(c *Config) { c.SingleNode = single })
			s := newSigner(t)
			e.register(s, e.base)
			if r := e.post(s, s.kid, nil); r.status != 200 {
				t.Fatalf("account: %d %s", r.status, r.body)
			}
			id := s.kid[strings.LastIndex(s.kid, "/")+1:]
			o, err := e.store.ACME().Get(t.Context(), "account", id)
			if err != nil {
				t.Fatal(err)
			}
			// Another writer deactivates it behind the server's back.
			o.Data = bytes.Replace(o.Data, []byte(`"status":"valid"`), []byte(`"status":"deactivated"`), 1)
			o.Status = "deactivated"
			if err := e.store.ACME().Update(t.Context(), o); err != nil {
				t.Fatal(err)
			}
			r := e.post(s, s.kid, nil)
			if single && r.status != 200 {
				t.Fatalf("SingleNode: the cached account was read again: %d %s", r.status, r.body)
			}
			if !single {
				wantProblem(t, r, 403, "unauthorized")
			}
		})
	}
}

func TestConcurrentOrdersAndLimits(t *testing.T) {
	e := newEnv(t, &fakeVA{}, func(c *Config) { c.Provisioners[0].MaxPendingOrders = 6 })
	s := newSigner(t)
	e.register(s, e.base)
	// Several orders of one account at once, for the same names.
	ids := []Identifier{{Type: "dns", Value: "p.example.test"}, {Type: "dns", Value: "q.example.test"}}
	var wg sync.WaitGroup
	bodies := make([][]byte, 5)
	for i := range bodies {
		bodies[i] = s.sign(t, []byte(`{"identifiers":[{"type":"dns","value":"p.example.test"},{"type":"dns","value":"q.example.test"}]}`),
			e.base+"/new-order", e.nonce(), nil)
	}
	res := make([]*resp, len(bodies))
	for i := range bodies {
		wg.Go(func() { res[i] = e.postRaw(e.base+"/new-order", bodies[i]) })
	}
	wg.Wait()
	var orders []orderResp
	for _, r := range res {
		if r.status != 201 {
			t.Fatalf("concurrent new-order: %d %s", r.status, r.body)
		}
		var o orderResp
		r.json(t, &o)
		orders = append(orders, o)
	}
	// Validate through the first order; a fresh order reuses the valid
	// authorizations and is ready at once.
	e.validate(s, orders[0], validation.HTTP01)
	_, o := e.newOrder(s, e.base, map[string]any{"identifiers": ids})
	if o.Status != "ready" {
		t.Fatalf("order after validation: %+v", o)
	}
	// The pending-order limit: 5 pending + 1 ready (stored pending) = 6.
	p := wantProblem(t, e.post(s, e.base+"/new-order", map[string]any{"identifiers": ids}), 429, "rateLimited")
	_ = p
	// Pruning removes nothing unexpired.
	n, err := e.srv.Prune(t.Context(), time.Hour)
	if err != nil || n != 0 {
		t.Fatalf("prune: %d %v", n, err)
	}
	// A deactivated account's key cannot re-register.
	if r := e.post(s, s.kid, map[string]any{"status": "deactivated"}); r.status != 200 {
		t.Fatalf("deactivate: %d", r.status)
	}
	wantProblem(t, e.post(&signer{key: s.key, alg: s.alg}, e.base+"/new-account", map[string]any{"termsOfServiceAgreed": true}), 403, "unauthorized")
}

func TestConfigCheck(t *testing.T) {
	a, st, sealer := newCA(t)
	provs := []Provisioner{{Name: "x", DNSSuffixes: []string{"Example.COM."}}}
	deps := Deps{CA: a, VA: &fakeVA{}, Store: st, Sealer: sealer}
	if _, err := New(Config{BaseURL: "https://h/acme", Provisioners: provs}, deps); err != nil {
		t.Fatal(err)
	}
	if provs[0].DNSSuffixes[0] != "Example.COM." || provs[0].Profiles != nil {
		t.Fatal("New modified the caller's configuration")
	}
	for _, bad := range []Config{
		{BaseURL: "ftp://h/acme", Provisioners: provs},
		{BaseURL: "https://h/acme"},
		{BaseURL: "https://h/acme", Provisioners: []Provisioner{{Name: "directory"}}},
		{BaseURL: "https://h/acme", Provisioners: []Provisioner{{Name: "x", Profiles: map[string]Profile{"p": {CAProfile: "nope"}}}}},
		{BaseURL: "https://h/acme", Provisioners: []Provisioner{{Name: "x", IPRanges: []string{"10.0.0.0"}}}},
		{BaseURL: "https://h/acme", Provisioners: provs, DefaultProvisioner: "y"},
	} {
		if _, err := New(bad, deps); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

func TestValidationWaitAndPrune(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	va := &fakeVA{fn: func(r validation.Request) error {
		if r.Value == "bad.example.test" {
			return errors.New("connection refused")
		}
		return nil
	}}
	e := newEnv(t, va, func(c *Config) {
		c.ValidationWait = 5 * time.Second
		c.Now = func() time.Time { return time.Unix(0, now.Load()) }
	})
	s := newSigner(t)
	e.register(s, e.base)
	// The challenge's answer carries the outcome the validation recorded,
	// success or failure, and the stored authorization agrees.
	for _, tc := range []struct{ name, status string }{{"v.example.test", "valid"}, {"bad.example.test", "invalid"}} {
		_, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: tc.name}}})
		var az authzResp
		e.post(s, o.Authorizations[0], nil).json(t, &az)
		r := e.post(s, az.Challenges[0].URL, map[string]any{})
		var ch struct {
			Status string
			Error  *struct{ Detail string }
		}
		r.json(t, &ch)
		if ch.Status != tc.status || (tc.status == "invalid") != (ch.Error != nil) {
			t.Fatalf("%s: with ValidationWait the challenge answered %s", tc.name, r.body)
		}
		var after authzResp
		e.post(s, o.Authorizations[0], nil).json(t, &after)
		if after.Status != tc.status || after.Challenges[0].Status != tc.status {
			t.Fatalf("%s: stored authorization %+v", tc.name, after)
		}
	}
	_, _ = e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "w.example.test"}}})
	// Far in the future everything but accounts is prunable.
	now.Add(int64(400 * 24 * time.Hour))
	n, err := e.srv.Prune(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if n < 6 { // nonces, 3 orders, 3 authorizations
		t.Fatalf("pruned %d rows", n)
	}
	left, err := e.store.ACME().List(t.Context(), storage.ACMEFilter{Kind: "authz"})
	if err != nil || len(left) != 0 {
		t.Fatalf("authorizations left: %d %v", len(left), err)
	}
}

func TestStaleValidationResumes(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	block := make(chan struct{})
	calls := atomic.Int32{}
	va := &fakeVA{fn: func(validation.Request) error {
		if calls.Add(1) == 1 {
			<-block // the first validation hangs, as on a node that died
			return errors.New("lost")
		}
		return nil
	}}
	e := newEnv(t, va, func(c *Config) { c.Now = func() time.Time { return time.Unix(0, now.Load()) } })
	t.Cleanup(func() { close(block) })
	s := newSigner(t)
	e.register(s, e.base)
	_, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "s.example.test"}}})
	var az authzResp
	e.post(s, o.Authorizations[0], nil).json(t, &az)
	e.post(s, az.Challenges[0].URL, map[string]any{})
	e.post(s, o.Authorizations[0], nil).json(t, &az)
	if az.Status != "pending" || az.Challenges[0].Status != "processing" {
		t.Fatalf("authz %+v", az)
	}
	now.Add(int64(3 * time.Minute))
	deadline := time.Now().Add(5 * time.Second)
	for az.Status == "pending" && time.Now().Before(deadline) {
		e.post(s, o.Authorizations[0], nil).json(t, &az)
		time.Sleep(10 * time.Millisecond)
	}
	if az.Status != "valid" || calls.Load() != 2 {
		t.Fatalf("after restart: %+v (%d validations)", az, calls.Load())
	}
}

// TestTwoNodesShareNonces runs a second server over the same database and
// public URL (two nodes behind one name): a nonce from one node is accepted
// once by the other, and orders are visible on both.
func TestTwoNodesShareNonces(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	cfg := e.srv.cfg
	node2, err := New(Config{BaseURL: cfg.BaseURL, Provisioners: []Provisioner{{Name: "default", Open: true, AllowAnyIP: true}}},
		Deps{CA: e.ca, VA: &fakeVA{}, Store: e.store, Sealer: e.sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node2.Close() })
	ts2 := httptest.NewTLSServer(node2.Handler())
	t.Cleanup(ts2.Close)
	s := newSigner(t)
	e.register(s, e.base)
	u := e.base + "/new-order"
	n := e.nonce() // from node 1
	body := s.sign(t, []byte(`{"identifiers":[{"type":"dns","value":"n.example.test"}]}`), u, n, nil)
	r := e.postRaw(ts2.URL+"/acme/new-order", body) // to node 2
	if r.status != http.StatusCreated {
		t.Fatalf("node 2 refused node 1's nonce: %d %s", r.status, r.body)
	}
	wantProblem(t, e.postRaw(u, body), 400, "badNonce") // replay on node 1
}

// TestWrongKeyAuthorizationRealVA answers http-01 with another key
// authorization through the real VA: the challenge and order turn invalid
// with incorrectResponse and nothing is issued.
func TestWrongKeyAuthorizationRealVA(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("not-the-token.not-the-thumbprint"))
	}))
	t.Cleanup(hs.Close)
	port := hs.Listener.Addr().(*net.TCPAddr).Port
	va, err := validation.New(validation.Config{HTTP01Port: port, Timeout: 5 * time.Second, AllowLoopback: true,
		LookupIP: func(context.Context, string) ([]net.IP, error) { return []net.IP{net.IPv4(127, 0, 0, 1)}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, va, nil)
	before := len(listAllCerts(t, e)) // the hierarchy's own certificates
	s := newSigner(t)
	e.register(s, e.base)
	loc, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "k.example.test"}}})
	azs := e.validate(s, o, validation.HTTP01)
	if azs[0].Status != "invalid" || azs[0].Challenges[0].Error == nil || azs[0].Challenges[0].Error.Type != ra.ErrorNS+"incorrectResponse" {
		t.Fatalf("authz %+v", azs[0])
	}
	e.post(s, loc, nil).json(t, &o)
	wantProblem(t, e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, []string{"k.example.test"}, nil))}), 403, "orderNotReady")
	if n := len(listAllCerts(t, e)); n != before {
		t.Fatalf("%d certificates issued", n-before)
	}
}

// TestConcurrentFinalize: of concurrent finalizes of one ready order
// (each with its own key), exactly one issues; the others get
// orderNotReady, and the inventory holds one certificate for the name.
func TestConcurrentFinalize(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	s := newSigner(t)
	e.register(s, e.base)
	names := []string{"once.example.test"}
	loc, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: names[0]}}})
	if azs := e.validate(s, o, validation.HTTP01); azs[0].Status != "valid" {
		t.Fatalf("authz %+v", azs[0])
	}
	const n = 8
	bodies := make([][]byte, n)
	for i := range bodies {
		payload, err := json.Marshal(map[string]any{"csr": b64(csrDER(t, names, nil))})
		if err != nil {
			t.Fatal(err)
		}
		bodies[i] = s.sign(t, payload, o.Finalize, e.nonce(), nil)
	}
	resps := make([]*resp, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { resps[i] = e.postRaw(o.Finalize, bodies[i]) })
	}
	wg.Wait()
	issued := 0
	for _, r := range resps {
		switch {
		case r == nil:
			t.Fatal("a finalize got no answer")
		case r.status == 200:
			issued++
		case r.status != 403 || r.problem(t).Type != ra.ErrorNS+"orderNotReady":
			t.Fatalf("concurrent finalize: %d %s", r.status, r.body)
		}
	}
	if issued != 1 {
		t.Fatalf("%d of %d concurrent finalizes issued, want 1", issued, n)
	}
	certs, _, err := e.store.Certificates().List(t.Context(), storage.CertFilter{Name: names[0]})
	if err != nil || len(certs) != 1 {
		t.Fatalf("inventory: %d certificates (%v), want 1", len(certs), err)
	}
	e.post(s, loc, nil).json(t, &o)
	if o.Status != "valid" || o.Certificate == "" {
		t.Fatalf("order after the finalizes: %+v", o)
	}
}

// TestFinalizeRecordsAtomically: the order's move to valid and the
// certificate's ACME record commit in the transaction that records the
// certificate. When that write fails (here a trigger refuses ACME
// certificate records), finalize answers serverInternal, the CA's
// inventory holds no certificate for the order's name, and the order is
// invalid rather than stuck processing; a new order then issues.
func TestFinalizeRecordsAtomically(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	s := newSigner(t)
	e.register(s, e.base)
	db := e.store.(interface{ DB() *sql.DB }).DB()
	if _, err := db.ExecContext(t.Context(), `CREATE TRIGGER acme_cert_refused BEFORE INSERT ON acme_objects
		WHEN NEW.kind = 'cert' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`); err != nil {
		t.Fatal(err)
	}
	names := []string{"atomic.example.test"}
	order := func() (string, orderResp) {
		loc, o := e.newOrder(s, e.base, map[string]any{"identifiers": []Identifier{{Type: "dns", Value: names[0]}}})
		if azs := e.validate(s, o, validation.HTTP01); azs[0].Status != "valid" {
			t.Fatalf("authz %+v", azs[0])
		}
		return loc, o
	}
	loc, o := order()
	r := e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, names, nil))})
	wantProblem(t, r, 500, "serverInternal")
	certs, _, err := e.store.Certificates().List(t.Context(), storage.CertFilter{Name: names[0]})
	if err != nil || len(certs) != 0 {
		t.Fatalf("inventory after the refused record: %d certificates (%v), want none", len(certs), err)
	}
	e.post(s, loc, nil).json(t, &o)
	if o.Status != "invalid" {
		t.Fatalf("order after the refused record: %+v, want invalid", o)
	}

	if _, err := db.ExecContext(t.Context(), `DROP TRIGGER acme_cert_refused`); err != nil {
		t.Fatal(err)
	}
	loc, o = order()
	if r := e.post(s, o.Finalize, map[string]any{"csr": b64(csrDER(t, names, nil))}); r.status != 200 {
		t.Fatalf("finalize: %d %s", r.status, r.body)
	}
	e.post(s, loc, nil).json(t, &o)
	if o.Status != "valid" || o.Certificate == "" {
		t.Fatalf("order after finalize: %+v", o)
	}
	if r := e.post(s, o.Certificate, nil); r.status != 200 {
		t.Fatalf("certificate: %d %s", r.status, r.body)
	}
	certs, _, err = e.store.Certificates().List(t.Context(), storage.CertFilter{Name: names[0]})
	if err != nil || len(certs) != 1 {
		t.Fatalf("inventory: %d certificates (%v), want 1", len(certs), err)
	}
}
