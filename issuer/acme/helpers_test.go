package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/hsm"
	"github.com/sigil-ca/sigil/hsm/hsmtest"
	"github.com/sigil-ca/sigil/issuer/validation"
	"github.com/sigil-ca/sigil/storage"
)

// fakeVA answers validations from a function (default: success).
type fakeVA struct {
	mu   sync.Mutex
	fn   func(validation.Request) error
	reqs []validation.Request
}

func (f *fakeVA) Validate(_ context.Context, r validation.Request) error {
	f.mu.Lock()
	f.reqs = append(f.reqs, r)
	fn := f.fn
	f.mu.Unlock()
	if fn != nil {
		return fn(r)
	}
	return nil
}

type env struct {
	t      testing.TB
	store  storage.Store
	ca     *ca.Authority
	srv    *Server
	ts     *httptest.Server
	base   string // BaseURL
	client *http.Client
	sealer *barrier.Barrier
}

// newCA builds a CA over the software keystore and SQLite.
func newCA(t testing.TB) (*ca.Authority, storage.Store, *barrier.Barrier) {
	t.Helper()
	ctx := context.Background()
	st, sealer := barriertest.New(t)
	cust := hsm.NewSoft(hsmtest.NewMemBlobStore(), sealer, nil)
	t.Cleanup(func() { cust.Close() })
	a, err := ca.New(cust, st, ca.Config{PublicURL: "http://ca.example.test:8080", CRLShards: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.InitHierarchy(ctx, ca.InitRequest{CommonName: "Sigil ACME Test Root", Organization: "Sigil Test", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	return a, st, sealer
}

// newEnv starts an ACME server over TLS with the given VA and config
// tweaks; BaseURL and provisioners default to one "default" provisioner.
func newEnv(t testing.TB, va VA, tweak func(*Config)) *env {
	t.Helper()
	a, st, sealer := newCA(t)
	mux := http.NewServeMux()
	ts := httptest.NewUnstartedServer(mux)
	ts.StartTLS()
	t.Cleanup(ts.Close)
	cfg := Config{
		BaseURL: ts.URL + "/acme",
		Provisioners: []Provisioner{
			// Open and any IP on purpose: the protocol tests register
			// without EAB; "corp" keeps the closed default.
			{Name: "default", Open: true, AllowAnyIP: true, Profiles: map[string]Profile{
				"default":    {CAProfile: ca.ProfileServer, Description: "90-day TLS server"},
				"shortlived": {CAProfile: ca.ProfileServer, Description: "7-day TLS server", TTL: 7 * 24 * time.Hour},
			}},
			{Name: "corp", DNSSuffixes: []string{"corp.test"}},
		},
		// The protocol tests fetch a nonce per request from one address;
		// the rate-limit tests turn the limits back on.
		RateLimits: RateLimits{NewNonce: Rate{PerSecond: -1}, NewAccount: Rate{PerSecond: -1}, NewOrder: Rate{PerSecond: -1}},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg, Deps{CA: a, VA: va, Store: st, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	mux.Handle("/acme/", srv.Handler())
	return &env{t: t, store: st, ca: a, srv: srv, ts: ts, base: cfg.BaseURL, client: ts.Client(), sealer: sealer}
}

func (e *env) rootPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(e.ca.Root())
	return p
}

// ---- a minimal ACME client for protocol tests

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r *resp) problem(t testing.TB) Problem {
	t.Helper()
	var p Problem
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want problem+json (status %d, body %s)", ct, r.status, r.body)
	}
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("problem: %v", err)
	}
	return p
}

func (r *resp) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (e *env) do(req *http.Request) *resp {
	e.t.Helper()
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return &resp{status: res.StatusCode, header: res.Header, body: b}
}

func (e *env) get(url string) *resp {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(req)
}

func (e *env) nonce() string {
	e.t.Helper()
	r := e.get(e.base + "/new-nonce")
	n := r.header.Get("Replay-Nonce")
	if r.status != http.StatusNoContent || n == "" {
		e.t.Fatalf("new-nonce: status %d, nonce %q", r.status, n)
	}
	return n
}

// signer signs ACME requests with key, by jwk (kid == "") or kid.
type signer struct {
	key crypto.Signer
	alg jose.SignatureAlgorithm
	kid string
}

func newSigner(t testing.TB) *signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{key: k, alg: jose.ES256}
}

func (s *signer) jwk() *jose.JSONWebKey { return &jose.JSONWebKey{Key: s.key.Public()} }

// sign builds a flattened JWS; headers override/add protected headers.
func (s *signer) sign(t testing.TB, payload []byte, url, nonce string, extra map[jose.HeaderKey]any) []byte {
	t.Helper()
	opts := &jose.SignerOptions{ExtraHeaders: map[jose.HeaderKey]any{"url": url}}
	if nonce != "" {
		opts.ExtraHeaders[jose.HeaderKey("nonce")] = nonce
	}
	for k, v := range extra {
		opts.ExtraHeaders[k] = v
	}
	sk := jose.SigningKey{Algorithm: s.alg, Key: s.key}
	if s.kid != "" {
		sk.Key = jose.JSONWebKey{Key: s.key, KeyID: s.kid}
	} else {
		opts.EmbedJWK = true
	}
	sig, err := jose.NewSigner(sk, opts)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := sig.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out := []byte(jws.FullSerialize())
	if len(payload) == 0 {
		// go-jose omits an empty payload; RFC 7515 §7.2.1 requires the
		// member, and ACME's POST-as-GET sends it as "".
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatal(err)
		}
		m["payload"] = ""
		out, _ = json.Marshal(m)
	}
	return out
}

func (e *env) postRaw(url string, body []byte) *resp {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/jose+json")
	return e.do(req)
}

// post signs v (nil: POST-as-GET) with a fresh nonce and posts it.
func (e *env) post(s *signer, url string, v any) *resp {
	e.t.Helper()
	var payload []byte
	if v != nil {
		var err error
		if payload, err = json.Marshal(v); err != nil {
			e.t.Fatal(err)
		}
	}
	return e.postRaw(url, s.sign(e.t, payload, url, e.nonce(), nil))
}

// register creates an account and sets s.kid.
func (e *env) register(s *signer, base string) {
	e.t.Helper()
	r := e.post(s, base+"/new-account", map[string]any{"termsOfServiceAgreed": true, "contact": []string{"mailto:a@example.test"}})
	if r.status != http.StatusCreated {
		e.t.Fatalf("new-account: %d %s", r.status, r.body)
	}
	s.kid = r.header.Get("Location")
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func decodeB64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func storageFilterAll() storage.CertFilter { return storage.CertFilter{Limit: 1000} }
