package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-ca/sigil/issuer/acme/ra"
)

func wantProblem(t *testing.T, r *resp, status int, typ string) Problem {
	t.Helper()
	p := r.problem(t)
	if r.status != status || p.Type != ra.ErrorNS+typ {
		t.Fatalf("got %d %s (%s), want %d %s", r.status, p.Type, p.Detail, status, ra.ErrorNS+typ)
	}
	if r.header.Get("Replay-Nonce") == "" {
		t.Fatalf("problem without Replay-Nonce")
	}
	if !strings.Contains(r.header.Get("Link"), `rel="index"`) {
		t.Fatalf("problem without Link rel=index")
	}
	return p
}

func TestDirectory(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	for _, path := range []string{"/acme/directory", "/acme/default/directory", "/acme/corp/directory"} {
		r := e.get(e.ts.URL + path)
		if r.status != 200 || r.header.Get("Replay-Nonce") == "" {
			t.Fatalf("%s: %d %s", path, r.status, r.body)
		}
		var d struct {
			NewOrder    string `json:"newOrder"`
			RenewalInfo string `json:"renewalInfo"`
			Meta        struct {
				Profiles map[string]string `json:"profiles"`
				EAB      bool              `json:"externalAccountRequired"`
			} `json:"meta"`
		}
		r.json(t, &d)
		prefix := strings.TrimSuffix(e.ts.URL+path, "/directory")
		if d.NewOrder != prefix+"/new-order" || d.RenewalInfo != prefix+"/renewal-info" {
			t.Fatalf("%s: urls %+v", path, d)
		}
		if strings.Contains(path, "corp") != d.Meta.EAB || len(d.Meta.Profiles) == 0 {
			t.Fatalf("%s: meta %+v", path, d.Meta)
		}
	}
	r := e.get(e.ts.URL + "/acme/nope/directory")
	wantProblem(t, r, 404, "malformed")
}

func TestJWSRejections(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	acct := newSigner(t)
	e.register(acct, e.base)
	newOrder := e.base + "/new-order"
	order := map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "a.example.test"}}}
	payload, _ := json.Marshal(order)

	t.Run("BadNonce", func(t *testing.T) {
		wantProblem(t, e.postRaw(newOrder, acct.sign(t, payload, newOrder, "bogus", nil)), 400, "badNonce")
	})
	t.Run("MissingNonce", func(t *testing.T) {
		wantProblem(t, e.postRaw(newOrder, acct.sign(t, payload, newOrder, "", nil)), 400, "badNonce")
	})
	t.Run("ReusedNonce", func(t *testing.T) {
		n := e.nonce()
		if r := e.postRaw(newOrder, acct.sign(t, payload, newOrder, n, nil)); r.status != 201 {
			t.Fatalf("first use: %d %s", r.status, r.body)
		}
		wantProblem(t, e.postRaw(newOrder, acct.sign(t, payload, newOrder, n, nil)), 400, "badNonce")
	})
	t.Run("WrongURL", func(t *testing.T) {
		body := acct.sign(t, payload, e.base+"/new-account", e.nonce(), nil)
		wantProblem(t, e.postRaw(newOrder, body), 403, "unauthorized")
	})
	t.Run("UnsupportedAlg", func(t *testing.T) {
		k, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		s := &signer{key: k, alg: jose.ES512, kid: acct.kid}
		p := wantProblem(t, e.postRaw(newOrder, s.sign(t, payload, newOrder, e.nonce(), nil)), 400, "badSignatureAlgorithm")
		if len(p.Algorithms) == 0 {
			t.Fatal("badSignatureAlgorithm without algorithms")
		}
	})
	t.Run("HMACAlg", func(t *testing.T) {
		sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")},
			&jose.SignerOptions{ExtraHeaders: map[jose.HeaderKey]any{"url": newOrder, "nonce": e.nonce(), "kid": acct.kid}})
		if err != nil {
			t.Fatal(err)
		}
		jws, _ := sig.Sign(payload)
		wantProblem(t, e.postRaw(newOrder, []byte(jws.FullSerialize())), 400, "badSignatureAlgorithm")
	})
	t.Run("JWKOnKidEndpoint", func(t *testing.T) {
		s := &signer{key: acct.key, alg: acct.alg}
		wantProblem(t, e.postRaw(newOrder, s.sign(t, payload, newOrder, e.nonce(), nil)), 400, "malformed")
	})
	t.Run("KidOnNewAccount", func(t *testing.T) {
		u := e.base + "/new-account"
		wantProblem(t, e.postRaw(u, acct.sign(t, []byte(`{}`), u, e.nonce(), nil)), 400, "malformed")
	})
	t.Run("KidAndJWK", func(t *testing.T) {
		jwk, _ := json.Marshal(acct.jwk())
		var m map[string]any
		_ = json.Unmarshal(jwk, &m)
		wantProblem(t, e.postRaw(newOrder, acct.sign(t, payload, newOrder, e.nonce(), map[jose.HeaderKey]any{"jwk": m})), 400, "malformed")
	})
	t.Run("OtherAccountsKey", func(t *testing.T) {
		other := newSigner(t)
		other.kid = acct.kid // claims acct's kid, signs with its own key
		wantProblem(t, e.postRaw(newOrder, other.sign(t, payload, newOrder, e.nonce(), nil)), 400, "malformed")
	})
	t.Run("UnknownAccount", func(t *testing.T) {
		s := newSigner(t)
		s.kid = e.base + "/acct/nope"
		wantProblem(t, e.postRaw(newOrder, s.sign(t, payload, newOrder, e.nonce(), nil)), 400, "accountDoesNotExist")
	})
	t.Run("AccountOfAnotherProvisioner", func(t *testing.T) {
		u := e.base + "/corp/new-order"
		wantProblem(t, e.postRaw(u, acct.sign(t, payload, u, e.nonce(), nil)), 400, "accountDoesNotExist")
	})
	t.Run("CompactSerialization", func(t *testing.T) {
		sig, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: acct.key, KeyID: acct.kid}},
			&jose.SignerOptions{ExtraHeaders: map[jose.HeaderKey]any{"url": newOrder, "nonce": e.nonce()}})
		jws, _ := sig.Sign(payload)
		c, _ := jws.CompactSerialize()
		wantProblem(t, e.postRaw(newOrder, []byte(c)), 400, "malformed")
	})
	t.Run("WrongContentType", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, newOrder, strings.NewReader(string(acct.sign(t, payload, newOrder, e.nonce(), nil))))
		req.Header.Set("Content-Type", "application/json")
		wantProblem(t, e.do(req), 415, "malformed")
	})
	t.Run("TooLarge", func(t *testing.T) {
		big := make([]byte, 70<<10)
		for i := range big {
			big[i] = 'a'
		}
		wantProblem(t, e.postRaw(newOrder, acct.sign(t, big, newOrder, e.nonce(), nil)), 413, "malformed")
	})
	t.Run("UnprotectedHeader", func(t *testing.T) {
		var m map[string]any
		_ = json.Unmarshal(acct.sign(t, payload, newOrder, e.nonce(), nil), &m)
		m["header"] = map[string]string{"kid": "x"}
		b, _ := json.Marshal(m)
		wantProblem(t, e.postRaw(newOrder, b), 400, "malformed")
	})
	t.Run("GetOnPostEndpoint", func(t *testing.T) {
		wantProblem(t, e.get(newOrder), 405, "malformed")
	})
}

// eabJWS builds an externalAccountBinding for the account key.
func eabJWS(t *testing.T, kid string, hmacKey []byte, url string, accountKey *jose.JSONWebKey) json.RawMessage {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: hmacKey},
		&jose.SignerOptions{ExtraHeaders: map[jose.HeaderKey]any{"url": url, "kid": kid}})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := accountKey.Public().MarshalJSON()
	jws, err := sig.Sign(pub)
	if err != nil {
		t.Fatal(err)
	}
	return json.RawMessage(jws.FullSerialize())
}

func TestEAB(t *testing.T) {
	e := newEnv(t, &fakeVA{}, nil)
	u := e.base + "/corp/new-account"
	s := newSigner(t)
	wantProblem(t, e.post(s, u, map[string]any{"termsOfServiceAgreed": true}), 401, "externalAccountRequired")

	k, err := e.srv.CreateEAB(t.Context(), "corp", EABPolicy{Description: "team a"})
	if err != nil {
		t.Fatal(err)
	}
	hk, err := decodeB64(k.HMACKey)
	if err != nil {
		t.Fatal(err)
	}
	// A wrong HMAC key fails.
	bad := append([]byte(nil), hk...)
	bad[0] ^= 1
	wantProblem(t, e.post(s, u, map[string]any{"externalAccountBinding": eabJWS(t, k.KeyID, bad, u, s.jwk())}), 403, "unauthorized")
	// The binding must carry this account's key.
	other := newSigner(t)
	wantProblem(t, e.post(s, u, map[string]any{"externalAccountBinding": eabJWS(t, k.KeyID, hk, u, other.jwk())}), 403, "unauthorized")

	r := e.post(s, u, map[string]any{"externalAccountBinding": eabJWS(t, k.KeyID, hk, u, s.jwk())})
	if r.status != 201 {
		t.Fatalf("with EAB: %d %s", r.status, r.body)
	}
	// Single use.
	wantProblem(t, e.post(other, u, map[string]any{"externalAccountBinding": eabJWS(t, k.KeyID, hk, u, other.jwk())}), 403, "unauthorized")
	list, err := e.srv.ListEAB(t.Context(), "corp")
	if err != nil || len(list) != 1 || list[0].Status != "used" || list[0].AccountID == "" {
		t.Fatalf("ListEAB: %+v %v", list, err)
	}
	// The key is stored sealed: the raw data never holds the secret.
	o, err := e.store.ACME().Get(t.Context(), "eab", k.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(o.Data), k.HMACKey) || strings.Contains(string(o.Data), b64(hk)) {
		t.Fatal("EAB secret stored in clear")
	}
	// Revoked keys are refused.
	k2, _ := e.srv.CreateEAB(t.Context(), "corp", EABPolicy{})
	if err := e.srv.RevokeEAB(t.Context(), k2.KeyID); err != nil {
		t.Fatal(err)
	}
	hk2, _ := decodeB64(k2.HMACKey)
	wantProblem(t, e.post(other, u, map[string]any{"externalAccountBinding": eabJWS(t, k2.KeyID, hk2, u, other.jwk())}), 403, "unauthorized")
	// Operators see and deactivate accounts.
	accts, err := e.srv.ListAccounts(t.Context(), "corp")
	if err != nil || len(accts) != 1 {
		t.Fatalf("ListAccounts: %+v %v", accts, err)
	}
	if err := e.srv.DeactivateAccount(t.Context(), accts[0].ID); err != nil {
		t.Fatal(err)
	}
	s.kid = e.base + "/corp/acct/" + accts[0].ID
	wantProblem(t, e.post(s, e.base+"/corp/new-order", map[string]any{"identifiers": []Identifier{{Type: "dns", Value: "a.corp.test"}}}), 403, "unauthorized")
}
