package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/ca"
)

// maxOCSPRequest bounds an OCSP request body; real ones are ~100 bytes.
const maxOCSPRequest = 16 << 10

func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) {
		mux.Handle(pattern, s.metrics.instrument(pattern, h))
	}
	route("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok\n")
	})
	route("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", s.metrics.handler())
	route("GET /ca/root.pem", func(w http.ResponseWriter, r *http.Request) {
		authority, err := s.authority()
		if err != nil {
			http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
			return
		}
		if root := authority.Root(); root != nil {
			writePEM(w, root.Raw)
			return
		}
		http.Error(w, "CA not initialised", http.StatusServiceUnavailable)
	})
	route("GET /ca/chain.pem", func(w http.ResponseWriter, r *http.Request) {
		authority, err := s.authority()
		if err != nil {
			http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
			return
		}
		chain := authority.Chain()
		if len(chain) == 0 {
			http.Error(w, "CA not initialised", http.StatusServiceUnavailable)
			return
		}
		var ders [][]byte
		for _, c := range chain {
			ders = append(ders, c.Raw)
		}
		writePEM(w, ders...)
	})
	route("GET /jwks/{path...}", s.handleJWKS)
	route("GET /ssh/{path...}", s.handleSSHCA)
	s.revocationRoutes(route)
	mux.Handle("/acme/", s.metrics.instrument("/acme/", s.acmeHandler()))
	return mux
}

// revocationRoutes are served on both listeners: what relying parties fetch
// to validate a certificate.
func (s *Server) revocationRoutes(route func(string, http.HandlerFunc)) {
	route("GET /ca/{file}", s.handleIssuerCert)
	route("GET /crl/{issuer}/{file}", s.handleCRL)
	route("GET /ocsp/{req...}", s.handleOCSPGet)
	route("POST /ocsp", s.handleOCSPPost)
}

// revocationHandler serves the plain-HTTP listener: revocation data and CA
// certificates only, never the API.
func (s *Server) revocationHandler() http.Handler {
	mux := http.NewServeMux()
	s.revocationRoutes(func(pattern string, h http.HandlerFunc) {
		mux.Handle(pattern, s.metrics.instrument("http:"+pattern, h))
	})
	return mux
}

func writePEM(w http.ResponseWriter, ders ...[]byte) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	for _, der := range ders {
		_ = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
}

type readiness struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	rd := readiness{Ready: true, Checks: map[string]string{}}
	check := func(name string, err error) {
		if err != nil {
			rd.Ready = false
			rd.Checks[name] = err.Error()
			return
		}
		rd.Checks[name] = "ok"
	}
	check("storage", s.store.Ping(ctx))
	a := s.current()
	if a == nil {
		check("seal", errors.New("sealed"))
	} else {
		check("seal", nil)
		check("custody", a.Custody.Ping(ctx))
		var caErr error
		if a.CA.Root() == nil {
			caErr = errors.New("CA not initialised: run `sigil ca init`")
		}
		check("ca", caErr)
	}
	w.Header().Set("Content-Type", "application/json")
	if !rd.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(rd)
}

// handleIssuerCert serves an issuer certificate as DER, the target of the
// AIA caIssuers URL in every certificate.
func (s *Server) handleIssuerCert(w http.ResponseWriter, r *http.Request) {
	id, ok := strings.CutSuffix(r.PathValue("file"), ".der")
	if !ok {
		http.NotFound(w, r)
		return
	}
	authority, err := s.authority()
	if err != nil {
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	cert, err := authority.IssuerCertificate(id)
	if err != nil {
		s.httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-cert")
	_, _ = w.Write(cert.Raw)
}

func (s *Server) handleCRL(w http.ResponseWriter, r *http.Request) {
	shardStr, ok := strings.CutSuffix(r.PathValue("file"), ".crl")
	shard, err := strconv.Atoi(shardStr)
	if !ok || err != nil || shard < 0 {
		http.Error(w, "CRL path must be /crl/ISSUER/SHARD.crl", http.StatusNotFound)
		return
	}
	authority, err := s.authority()
	if err != nil {
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	der, err := authority.CRL(r.Context(), r.PathValue("issuer"), shard)
	if err != nil {
		s.httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	_, _ = w.Write(der)
}

func (s *Server) handleOCSPGet(w http.ResponseWriter, r *http.Request) {
	// RFC 6960 A.1: GET {url}/{url-encoding of base-64 encoding of the DER}.
	raw := r.PathValue("req")
	if unescaped, err := url.PathUnescape(raw); err == nil {
		raw = unescaped
	}
	if len(raw) > maxOCSPRequest {
		http.Error(w, "OCSP request too large", http.StatusRequestEntityTooLarge)
		return
	}
	req, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		http.Error(w, "OCSP GET request is not base64", http.StatusBadRequest)
		return
	}
	s.answerOCSP(w, r, req)
}

func (s *Server) handleOCSPPost(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOCSPRequest))
	if err != nil {
		http.Error(w, "OCSP request too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	s.answerOCSP(w, r, body)
}

func (s *Server) answerOCSP(w http.ResponseWriter, r *http.Request, req []byte) {
	authority, err := s.authority()
	if err != nil {
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	resp, err := authority.OCSP(r.Context(), req)
	if err != nil {
		s.httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	_, _ = w.Write(resp)
}

func (s *Server) httpError(w http.ResponseWriter, err error) {
	var ce *ca.Error
	if errors.As(err, &ce) {
		switch ce.Kind {
		case ca.KindNotFound:
			http.Error(w, ce.Error(), http.StatusNotFound)
			return
		case ca.KindBadRequest, ca.KindBadCSR:
			http.Error(w, ce.Error(), http.StatusBadRequest)
			return
		}
	}
	s.log.Error("HTTPS request failed", "err", err)
	http.Error(w, "internal error", http.StatusInternalServerError)
}
