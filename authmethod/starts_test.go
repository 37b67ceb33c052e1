package authmethod_test

import (
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/authmethod"
	"github.com/sigil-ca/sigil/authmethod/jwt"
	"github.com/sigil-ca/sigil/barrier/barriertest"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/internal/oidcprovider"
	"github.com/sigil-ca/sigil/ratelimit"
)

// TestAuthURLStartsLimitedPerSource: unauthenticated browser-login starts
// are limited per source, successful ones included: each stores a sealed
// record until its callback or expiry. Before, only failed starts counted,
// so one client could start logins without bound, filling storage and, at
// the pending limit, refusing every user's browser login for the records'
// lifetime.
func TestAuthURLStartsLimitedPerSource(t *testing.T) {
	ctx := t.Context()
	const redirect = "http://localhost:8250/oidc/callback"
	op, err := oidcprovider.Start("sigil-cli", redirect)
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	st, b := barriertest.New(t)
	reg, err := authmethod.NewRegistry(jwt.NewType(jwt.KindOIDC, nil))
	if err != nil {
		t.Fatal(err)
	}
	m := authmethod.NewManager(authmethod.Options{Settings: st.Settings(), Sealer: b, Registry: reg,
		Starts: ratelimit.New(0.001, 3)})
	t.Cleanup(func() { _ = m.Close() })
	oidcMount(t, m, op, redirect)
	start := func(source string) error {
		_, err := m.AuthURL(ctx, source, "sso", "", redirect, "client-nonce-0123456789")
		return err
	}
	for i := range 3 {
		if err := start("192.0.2.1"); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
	}
	err = start("192.0.2.1")
	if errs.KindOf(err) != errs.ResourceExhausted || !strings.Contains(err.Error(), "from this address") {
		t.Fatalf("4th start from one address = %v, want ResourceExhausted naming the address", err)
	}
	if err := start("192.0.2.2"); err != nil {
		t.Fatalf("another address is not limited by the first: %v", err)
	}
	if keys, err := st.Settings().List(ctx, "authmethod.pending/sso/"); err != nil || len(keys) != 4 {
		t.Fatalf("stored started logins: %d, %v; want 4 (the refused start stores nothing)", len(keys), err)
	}
}
