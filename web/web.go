// Package web is Sigil's HTTP front end: what probes, relying parties and
// ACME clients fetch. It serves health and readiness, CA certificates,
// CRLs and OCSP (package ca/responder), tokens mounts' JWKS, keys mounts'
// SSH CA keys, and mounts the ACME server's own front end (package
// issuer/acme/wfe). Like ACME's wfe it is a thin adapter over core; package
// server binds the listeners, chooses their TLS and serves these handlers.
package web

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/ca/responder"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/issuer/acme"
	"github.com/sigil-ca/sigil/telemetry"
)

// Front serves the HTTP endpoints from core's current state: which CA,
// mounts and ACME server exist can change while it runs (init, unseal,
// seal), so every request asks core.
type Front struct {
	core    *core.Core
	metrics *telemetry.Metrics
	log     *slog.Logger
}

// New returns the front end over c; m instruments every route.
func New(c *core.Core, m *telemetry.Metrics, log *slog.Logger) *Front {
	return &Front{core: c, metrics: m, log: log}
}

// Handler serves the HTTPS listener: everything in this package.
func (f *Front) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) {
		mux.Handle(pattern, f.metrics.Instrument(pattern, h))
	}
	route("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	route("GET /readyz", f.handleReady)
	mux.Handle("GET /metrics", f.metrics.Handler())
	route("GET /ca/root.pem", func(w http.ResponseWriter, _ *http.Request) {
		root, err := f.core.Root()
		f.writePEM(w, err, root)
	})
	route("GET /ca/chain.pem", func(w http.ResponseWriter, _ *http.Request) {
		chain, err := f.core.Chain()
		f.writePEM(w, err, chain...)
	})
	// A tokens mount's public signing keys, for anyone verifying its JWTs.
	// The cache time is short enough that a rotated-in key is picked up well
	// before tokens signed with it are common.
	route("GET /jwks/{path...}", publicDocument(f, ".json", "application/jwk-set+json", "public, max-age=300",
		func(ctx context.Context, e engines.JWKSPublisher) ([]byte, error) { return e.JWKS(ctx) }))
	// A keys mount's SSH CA public key, for sshd's TrustedUserCAKeys or
	// known_hosts @cert-authority.
	route("GET /ssh/{path...}", publicDocument(f, "/ca.pub", "text/plain; charset=utf-8", "",
		func(ctx context.Context, e engines.SSHSigner) ([]byte, error) { return e.SSHCAPublicKey(ctx) }))
	f.revocationRoutes(route)
	mux.Handle("/acme/", f.metrics.Instrument("/acme/", f.acmeHandler()))
	return mux
}

// RevocationHandler serves the plain-HTTP listener: revocation data and CA
// certificates only, never the API.
func (f *Front) RevocationHandler() http.Handler {
	mux := http.NewServeMux()
	f.revocationRoutes(func(pattern string, h http.HandlerFunc) {
		mux.Handle(pattern, f.metrics.Instrument("http:"+pattern, h))
	})
	return mux
}

// revocationRoutes are served on both listeners: what relying parties fetch
// to validate a certificate.
func (f *Front) revocationRoutes(route func(string, http.HandlerFunc)) {
	authority := func() (responder.Authority, error) {
		u, err := f.core.Unsealed()
		if err != nil {
			return nil, err
		}
		return u.CA, nil
	}
	responder.New(authority, f.metrics, f.httpError).Routes(route)
}

// acmeHandler routes /acme/ to the current activation's ACME server; while
// sealed it answers with an ACME problem document.
func (f *Front) acmeHandler() http.Handler {
	unavailable := acme.Unavailable("the ACME server is unavailable: sigil is sealed or ACME is disabled")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u := f.core.Current()
		if u == nil || u.ACME == nil {
			unavailable.ServeHTTP(w, r)
			return
		}
		u.ACME.Handler().ServeHTTP(w, r)
	})
}

// publicDocument serves GET /PREFIX/MOUNT+suffix: a public per-mount
// document (JWKS, SSH CA key) that get reads from the mount's engine.
func publicDocument[T any](f *Front, suffix, contentType, cacheControl string, get func(context.Context, T) ([]byte, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mount, ok := strings.CutSuffix(r.PathValue("path"), suffix)
		if !ok {
			http.NotFound(w, r)
			return
		}
		e, err := core.PublicEngine[T](r.Context(), f.core, mount)
		if err != nil {
			if errs.KindOf(err) == errs.NotFound {
				http.NotFound(w, r)
			} else {
				http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
			}
			return
		}
		body, err := get(r.Context(), e)
		if err != nil {
			f.log.Error("public mount document", "mount", mount, "path", r.URL.Path, "err", err)
			http.Error(w, "document unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", contentType)
		if cacheControl != "" {
			w.Header().Set("Cache-Control", cacheControl)
		}
		_, _ = w.Write(body)
	}
}

func (f *Front) writePEM(w http.ResponseWriter, err error, certs ...*x509.Certificate) {
	if err != nil {
		f.httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = io.WriteString(w, ca.PEMCertificates(certs...))
}

type readiness struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

func (f *Front) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	ready, checks := f.core.Ready(ctx)
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(readiness{Ready: ready, Checks: checks})
}

// httpError is the one mapping of a domain error to an HTTP answer: internal
// causes are logged, never shown.
func (f *Front) httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch errs.KindOf(core.OpError("http", err)) {
	case errs.NotFound:
		code = http.StatusNotFound
	case errs.InvalidArgument:
		code = http.StatusBadRequest
	case errs.Unavailable, errs.FailedPrecondition:
		code = http.StatusServiceUnavailable
	default:
		f.log.Error("HTTPS request failed", "err", err)
		http.Error(w, "internal error", code)
		return
	}
	http.Error(w, err.Error(), code)
}
