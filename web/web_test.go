package web

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/config"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/adapt"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/storage/sqlite"
	"github.com/sigil-ca/sigil/telemetry"
)

// newCore returns a core over a fresh SQLite store: sealed, or (dev)
// unsealed with a CA.
func newCore(t *testing.T, dev bool) *core.Core {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "sigil.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := config.Default()
	cfg.DataDir, cfg.PublicURL, cfg.ACME.Disabled, cfg.Dev = dir, "http://127.0.0.1:1", true, dev
	c := core.New(core.Options{Config: cfg, Store: st, Barrier: barrier.New(adapt.Keyring(st.Keyring()))})
	t.Cleanup(c.Close)
	if dev {
		if err := c.Start(ctx, true); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DevBootstrap(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func get(t *testing.T, h http.Handler, method, path string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body), rec.Result().Header
}

// TestRoutes: what each listener serves while sealed and while unsealed;
// the plain-HTTP listener serves revocation data and CA certificates only.
func TestRoutes(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	sealed := New(newCore(t, false), telemetry.New("test"), log)
	open := New(newCore(t, true), telemetry.New("test"), log)
	for _, tc := range []struct {
		name       string
		h          http.Handler
		method     string
		path       string
		wantCode   int
		wantInBody string
	}{
		{"healthz sealed", sealed.Handler(), "GET", "/healthz", 200, "ok"},
		{"readyz sealed", sealed.Handler(), "GET", "/readyz", 503, `"ready":false`},
		{"root sealed", sealed.Handler(), "GET", "/ca/root.pem", 503, "sealed"},
		{"jwks sealed", sealed.Handler(), "GET", "/jwks/tokens.json", 503, "sealed"},
		{"acme sealed", sealed.Handler(), "GET", "/acme/directory", 503, "unavailable"},
		{"metrics", sealed.Handler(), "GET", "/metrics", 200, "sigil_"},
		{"post to healthz", sealed.Handler(), "POST", "/healthz", 405, ""},
		{"root", open.Handler(), "GET", "/ca/root.pem", 200, "BEGIN CERTIFICATE"},
		{"chain", open.Handler(), "GET", "/ca/chain.pem", 200, "BEGIN CERTIFICATE"},
		{"readyz", open.Handler(), "GET", "/readyz", 200, `"ready":true`},
		{"jwks of no mount", open.Handler(), "GET", "/jwks/nope.json", 404, ""},
		{"jwks without suffix", open.Handler(), "GET", "/jwks/nope", 404, ""},
		{"ssh CA of no mount", open.Handler(), "GET", "/ssh/nope/ca.pub", 404, ""},
		{"acme disabled", open.Handler(), "GET", "/acme/directory", 503, "unavailable"},
		{"plain http: no probes", open.RevocationHandler(), "GET", "/healthz", 404, ""},
		{"plain http: no metrics", open.RevocationHandler(), "GET", "/metrics", 404, ""},
		{"plain http: no acme", open.RevocationHandler(), "GET", "/acme/directory", 404, ""},
		{"plain http: unknown issuer", open.RevocationHandler(), "GET", "/ca/nope.der", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, _ := get(t, tc.h, tc.method, tc.path)
			if code != tc.wantCode || !strings.Contains(body, tc.wantInBody) {
				t.Fatalf("%s %s = %d %q, want %d containing %q", tc.method, tc.path, code, body, tc.wantCode, tc.wantInBody)
			}
		})
	}
	// The root served is the CA's.
	_, body, hdr := get(t, open.Handler(), "GET", "/ca/root.pem")
	blk, _ := pem.Decode([]byte(body))
	if blk == nil || hdr.Get("Content-Type") != "application/x-pem-file" {
		t.Fatalf("root.pem: %q, content type %q", body, hdr.Get("Content-Type"))
	}
	root, err := x509.ParseCertificate(blk.Bytes)
	if want, _ := open.core.Root(); err != nil || !root.Equal(want) {
		t.Fatalf("root.pem is not the CA's root: %v", err)
	}
}

// TestHTTPError: the one mapping of domain errors to HTTP; an internal
// cause is never shown.
func TestHTTPError(t *testing.T) {
	f := &Front{log: slog.New(slog.DiscardHandler)}
	for _, tc := range []struct {
		err      error
		wantCode int
		wantBody string
	}{
		{errs.New(errs.NotFound, "no such issuer"), 404, "no such issuer"},
		{errs.New(errs.InvalidArgument, "bad shard"), 400, "bad shard"},
		{errs.New(errs.Unavailable, "database down"), 503, "database down"},
		{errs.New(errs.FailedPrecondition, "sealed"), 503, "sealed"},
		{errors.New("pq: password authentication failed for user x"), 500, "internal error"},
	} {
		rec := httptest.NewRecorder()
		f.httpError(rec, tc.err)
		body := rec.Body.String()
		if rec.Code != tc.wantCode || !strings.Contains(body, tc.wantBody) {
			t.Errorf("%v: %d %q, want %d %q", tc.err, rec.Code, body, tc.wantCode, tc.wantBody)
		}
		if tc.wantCode == 500 && strings.Contains(body, "password") {
			t.Errorf("internal cause shown: %q", body)
		}
	}
}
