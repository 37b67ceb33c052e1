package authmethod_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/authmethod/jwt"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/internal/oidcprovider"
)

// oidcMount enables the oidc mount "sso" on m against the provider op,
// with the role "people" (the default) allowed to return to redirect.
func oidcMount(t *testing.T, m *authmethod.Manager, op *oidcprovider.Provider, redirect string) {
	t.Helper()
	ctx := t.Context()
	if err := m.Enable(ctx, "sso", "oidc"); err != nil {
		t.Fatal(err)
	}
	if err := m.Configure(ctx, "sso", map[string]string{"oidc_discovery_url": op.Issuer, "oidc_discovery_ca_pem": op.CAPEM,
		"oidc_client_id": "sigil-cli", "default_role": "people"}); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteRole(ctx, "sso", "people", map[string]string{"allowed_redirect_uris": redirect, "user_claim": "sub",
		"token_policies": "people", "token_ttl": "10m"}); err != nil {
		t.Fatal(err)
	}
}

// TestOIDCCallbackOnAnotherNode: a browser login started on one node
// (Manager) is finished on another over the same storage, against a real
// OpenID provider, and its state works only once.
func TestOIDCCallbackOnAnotherNode(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	var state, code string
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		state, code = r.URL.Query().Get("state"), r.URL.Query().Get("code")
		mu.Unlock()
		_, _ = w.Write([]byte("ok"))
	}))
	defer cb.Close()
	_, port, _ := strings.Cut(strings.TrimPrefix(cb.URL, "http://"), ":")
	redirect := "http://localhost:" + port + "/oidc/callback"
	op, err := oidcprovider.Start("sigil-cli", redirect)
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()

	st, b := barriertest.New(t)
	node := func() *authmethod.Manager {
		reg, err := authmethod.NewRegistry(jwt.NewType(jwt.KindOIDC, nil))
		if err != nil {
			t.Fatal(err)
		}
		m := authmethod.NewManager(authmethod.Options{Settings: st.Settings(), Sealer: b, Registry: reg})
		t.Cleanup(func() { _ = m.Close() })
		return m
	}
	a, bNode := node(), node()
	oidcMount(t, a, op, redirect)
	const clientNonce = "client-nonce-0123456789"
	authURL, err := a.AuthURL(ctx, "127.0.0.1", "sso", "people", redirect, clientNonce)
	if err != nil {
		t.Fatal(err)
	}
	bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := op.Browse(bctx, authURL, op.Username, oidcprovider.Password); err != nil {
		t.Fatalf("browser login: %v", err)
	}
	mu.Lock()
	creds := authmethod.Credentials{State: state, Code: code, ClientNonce: clientNonce}
	mu.Unlock()
	if creds.State == "" || creds.Code == "" {
		t.Fatal("the provider did not redirect with state and code")
	}
	v, err := bNode.Login(ctx, "127.0.0.1", "sso", creds)
	if err != nil {
		t.Fatalf("callback on the other node: %v", err)
	}
	if v.Identity.Name != oidcprovider.Subject {
		t.Fatalf("identity %q, want %q", v.Identity.Name, oidcprovider.Subject)
	}
	// A login started before the mount was disabled does not survive it.
	if _, err := a.AuthURL(ctx, "127.0.0.1", "sso", "people", redirect, clientNonce); err != nil {
		t.Fatal(err)
	}
	if keys, err := st.Settings().List(ctx, "authmethod.pending/sso/"); err != nil || len(keys) != 1 {
		t.Fatalf("started logins before disable: %v, %v", keys, err)
	}
	defer func() {
		if err := a.Disable(ctx, "sso"); err != nil {
			t.Fatal(err)
		}
		if keys, err := st.Settings().List(ctx, "authmethod.pending/sso/"); err != nil || len(keys) != 0 {
			t.Fatalf("started logins after disable: %v, %v; want none", keys, err)
		}
	}()
	// The state is spent: a replay on either node is refused.
	for name, m := range map[string]*authmethod.Manager{"starting node": a, "finishing node": bNode} {
		if _, err := m.Login(ctx, "127.0.0.2", "sso", creds); errs.KindOf(err) != errs.PermissionDenied ||
			!strings.Contains(err.Error(), "unknown or expired login state") {
			t.Fatalf("replayed callback on the %s: %v, want refused as an unknown state", name, err)
		}
	}
}
