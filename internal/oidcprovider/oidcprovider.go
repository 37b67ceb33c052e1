// Package oidcprovider starts a real OpenID Connect provider for tests:
// zitadel/oidc's op package with its example in-memory storage and login
// form, served over HTTPS by an httptest TLS server. It exists for tests
// only (the browser login of `sigil login --method oidc`); nothing in the
// server imports it.
package oidcprovider

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
)

// Username and Password log in to the provider's login form; Subject is
// the sub claim of that user's ID tokens.
const (
	Password = "verysecure"
	Subject  = "id1"
)

// Provider is a running OP.
type Provider struct {
	// Issuer is the provider's https:// issuer (its discovery URL).
	Issuer string
	// CAPEM is the PEM certificate the provider's TLS server uses.
	CAPEM string
	// Username logs in with Password.
	Username string
	srv      *httptest.Server
}

// Start runs a provider with one native (PKCE, no secret) client,
// clientID, allowed to redirect to redirectURIs. Close stops it.
func Start(clientID string, redirectURIs ...string) (*Provider, error) {
	var h atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.Load().(http.Handler).ServeHTTP(w, r)
	}))
	srv.StartTLS()
	issuer := srv.URL
	clients := map[string]*storage.Client{clientID: storage.NativeClient(clientID, redirectURIs...)}
	st := storage.NewStorageWithClients(storage.NewUserStore(issuer), clients)
	h.Store(exampleop.SetupServer(issuer, st, nil, false))
	host := strings.Split(strings.TrimPrefix(issuer, "https://"), ":")[0]
	return &Provider{Issuer: issuer, Username: "test-user@" + host, srv: srv,
		CAPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))}, nil
}

// Close stops the provider.
func (p *Provider) Close() { p.srv.Close() }

var hiddenID = regexp.MustCompile(`name="id" value="([^"]+)"`)

// Browse plays the browser: it opens authURL, posts the login form with
// username and password, and follows the redirects to the client's
// callback (which must answer 200). It returns the callback's body.
func (p *Provider) Browse(ctx context.Context, authURL, username, password string) (string, error) {
	pool := x509.NewCertPool()
	pool.AddCert(p.srv.Certificate())
	jar, err := cookiejar.New(nil)
	if err != nil {
		return "", err
	}
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	get := func(u string) (*http.Response, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, "", err
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp, string(b), err
	}
	resp, body, err := get(authURL)
	if err != nil {
		return "", fmt.Errorf("open the authorization URL: %w", err)
	}
	m := hiddenID.FindStringSubmatch(body)
	if m == nil {
		return "", fmt.Errorf("no login form at %s (HTTP %d): %.300s", resp.Request.URL, resp.StatusCode, body)
	}
	form := url.Values{"id": {m[1]}, "username": {username}, "password": {password}}
	loginURL := p.Issuer + "/login/username"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, loginURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err = c.Do(req)
	if err != nil {
		return "", fmt.Errorf("post the login form: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK || strings.HasPrefix(resp.Request.URL.String(), p.Issuer) {
		return "", errors.New("login did not reach the client's callback: " + resp.Request.URL.String() + ": " + string(b))
	}
	return string(b), nil
}
