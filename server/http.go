package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"github.com/sigil-ca/sigil/ca/responder"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
)

func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) {
		mux.Handle(pattern, s.metrics.Instrument(pattern, h))
	}
	route("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	route("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", s.metrics.Handler())
	route("GET /ca/root.pem", func(w http.ResponseWriter, r *http.Request) {
		root, err := s.core.Root()
		if err != nil {
			s.httpError(w, err)
			return
		}
		writePEM(w, root)
	})
	route("GET /ca/chain.pem", func(w http.ResponseWriter, r *http.Request) {
		chain, err := s.core.Chain()
		if err != nil {
			s.httpError(w, err)
			return
		}
		writePEM(w, chain...)
	})
	route("GET /jwks/{path...}", s.handleJWKS())
	route("GET /ssh/{path...}", s.handleSSHCA())
	s.revocationRoutes(route)
	mux.Handle("/acme/", s.metrics.Instrument("/acme/", s.acmeHandler()))
	return mux
}

// revocationRoutes are served on both listeners: what relying parties fetch
// to validate a certificate.
func (s *Server) revocationRoutes(route func(string, http.HandlerFunc)) {
	authority := func() (responder.Authority, error) {
		a, err := s.authority()
		if err != nil {
			return nil, err
		}
		return a, nil
	}
	responder.New(authority, s.metrics, s.httpError).Routes(route)
}

// revocationHandler serves the plain-HTTP listener: revocation data and CA
// certificates only, never the API.
func (s *Server) revocationHandler() http.Handler {
	mux := http.NewServeMux()
	s.revocationRoutes(func(pattern string, h http.HandlerFunc) {
		mux.Handle(pattern, s.metrics.Instrument("http:"+pattern, h))
	})
	return mux
}

func writePEM(w http.ResponseWriter, certs ...*x509.Certificate) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = io.WriteString(w, pemBundle(certs...))
}

type readiness struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	ready, checks := s.core.Ready(ctx)
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(readiness{Ready: ready, Checks: checks})
}

// httpError is the one mapping of a domain error to an HTTP answer:
// internal causes are logged, never shown.
func (s *Server) httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch errs.KindOf(core.OpError("http", err)) {
	case errs.NotFound:
		code = http.StatusNotFound
	case errs.InvalidArgument:
		code = http.StatusBadRequest
	case errs.Unavailable, errs.FailedPrecondition:
		code = http.StatusServiceUnavailable
	default:
		s.log.Error("HTTPS request failed", "err", err)
		http.Error(w, "internal error", code)
		return
	}
	http.Error(w, err.Error(), code)
}
