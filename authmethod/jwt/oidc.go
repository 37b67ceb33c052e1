package jwt

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/internal/errs"
)

// pendingTTL is how long a started browser login may take.
const pendingTTL = 5 * time.Minute

// maxPending bounds started, unfinished browser logins held in memory.
const maxPending = 10_000

// pending is one started browser login. Under a Manager it lives in
// sealed storage (Method.shared), so any node finishes it; a Method used
// alone keeps it in this node's memory.
type pending struct {
	role, redirectURI, clientNonce, nonce, verifier string
	expires                                         time.Time
}

type pendingStore struct {
	mu sync.Mutex
	m  map[string]pending
}

func newPendingStore() *pendingStore { return &pendingStore{m: map[string]pending{}} }

func (p *pendingStore) put(state string, v pending) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if len(p.m) >= maxPending {
		for k, e := range p.m {
			if now.After(e.expires) {
				delete(p.m, k)
			}
		}
		if len(p.m) >= maxPending {
			return errs.New(errs.ResourceExhausted, "too many browser logins in progress: retry in a few minutes")
		}
	}
	p.m[state] = v
	return nil
}

// take removes and returns state's login: a state works once.
func (p *pendingStore) take(state string) (pending, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.m[state]
	delete(p.m, state)
	if !ok || time.Now().After(v.expires) {
		return pending{}, false
	}
	return v, true
}

func randomString() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func (m *Method) oauth(redirectURI string, role *authmethod.Role) *oauth2.Config {
	scopes := []string{oidc.ScopeOpenID}
	scopes = append(scopes, authmethod.SplitList(role.Fields["oidc_scopes"])...)
	return &oauth2.Config{ClientID: m.cfg["oidc_client_id"], ClientSecret: m.cfg["oidc_client_secret"],
		Endpoint: m.provider.Endpoint(), RedirectURL: redirectURI, Scopes: scopes}
}

// AuthURL implements authmethod.Redirector: authorization code with PKCE
// (S256) and a nonce; the redirect URI must be one the role allows.
func (m *Method) AuthURL(ctx context.Context, role *authmethod.Role, redirectURI, clientNonce string) (string, error) {
	if m.kind != KindOIDC || m.provider == nil {
		return "", errs.New(errs.FailedPrecondition, "this mount has no browser login: enable an oidc mount")
	}
	if !slices.Contains(authmethod.SplitList(role.Fields["allowed_redirect_uris"]), redirectURI) {
		return "", invalidf("redirect_uri %q is not in the role's allowed_redirect_uris", redirectURI)
	}
	if len(clientNonce) < 16 || len(clientNonce) > 256 {
		return "", invalidf("client_nonce is required (16 to 256 characters)")
	}
	state, err := randomString()
	if err != nil {
		return "", err
	}
	nonce, err := randomString()
	if err != nil {
		return "", err
	}
	verifier := oauth2.GenerateVerifier()
	if err := m.putPending(ctx, state, pending{role: role.Name, redirectURI: redirectURI, clientNonce: clientNonce, nonce: nonce,
		verifier: verifier, expires: time.Now().Add(pendingTTL)}); err != nil {
		return "", err
	}
	return m.oauth(redirectURI, role).AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), nil
}

// callback finishes a browser login: the state must be one that was
// started (on any node, with the shared store), for the same client (client nonce), within pendingTTL; the code
// is exchanged with the PKCE verifier and the ID token verified (issuer,
// audience = client id, nonce, signature, times) before the role's bounds
// apply.
func (m *Method) callback(ctx context.Context, creds authmethod.Credentials, roles authmethod.RoleLoader) (*authmethod.Identity, error) {
	if creds.State == "" || creds.Code == "" {
		return nil, invalidf("state and code are required (from the provider's redirect)")
	}
	p, ok, err := m.takePending(ctx, creds.State)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, deniedf("unknown or expired login state: start again with sigil login --method oidc")
	}
	if subtle.ConstantTimeCompare([]byte(p.clientNonce), []byte(creds.ClientNonce)) != 1 {
		return nil, deniedf("client nonce does not match the login that was started")
	}
	role, err := roles(ctx, p.role)
	if err != nil {
		return nil, err
	}
	octx := ctx
	if m.client != nil {
		octx = oidc.ClientContext(ctx, m.client)
	}
	tok, err := m.oauth(p.redirectURI, role).Exchange(octx, creds.Code, oauth2.VerifierOption(p.verifier))
	if err != nil {
		return nil, deniedf("the provider refused the code: %v", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, deniedf("the provider returned no id_token")
	}
	claims, err := m.verify(ctx, raw, role)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(audiences(claims), m.cfg["oidc_client_id"]) {
		return nil, deniedf("id_token audience is not this client")
	}
	if n, _ := claims["nonce"].(string); subtle.ConstantTimeCompare([]byte(n), []byte(p.nonce)) != 1 {
		return nil, deniedf("id_token nonce does not match the login that was started")
	}
	return identityFrom(claims, role)
}

// pendingWire is a started login as the shared store keeps it (sealed).
type pendingWire struct {
	Role        string `json:"role"`
	RedirectURI string `json:"redirect_uri"`
	ClientNonce string `json:"client_nonce"`
	Nonce       string `json:"nonce"`
	Verifier    string `json:"verifier"`
}

func (m *Method) putPending(ctx context.Context, state string, p pending) error {
	if m.shared == nil {
		return m.pending.put(state, p)
	}
	raw, err := json.Marshal(pendingWire{Role: p.role, RedirectURI: p.redirectURI, ClientNonce: p.clientNonce, Nonce: p.nonce, Verifier: p.verifier})
	if err != nil {
		return err
	}
	defer clear(raw)
	return m.shared.Put(ctx, state, raw, p.expires)
}

// takePending returns state's started login once; ok is false for an
// unknown, used or expired state.
func (m *Method) takePending(ctx context.Context, state string) (pending, bool, error) {
	if m.shared == nil {
		p, ok := m.pending.take(state)
		return p, ok, nil
	}
	raw, err := m.shared.Take(ctx, state)
	if errors.Is(err, authmethod.ErrPendingNotFound) {
		return pending{}, false, nil
	}
	if err != nil {
		return pending{}, false, err
	}
	defer clear(raw)
	var w pendingWire
	if err := json.Unmarshal(raw, &w); err != nil {
		return pending{}, false, errs.Wrap(errs.Internal, "decode started login", err)
	}
	return pending{role: w.Role, redirectURI: w.RedirectURI, clientNonce: w.ClientNonce, nonce: w.Nonce, verifier: w.Verifier}, true, nil
}
