package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/telemetry"
)

// maxOCSPRequest bounds an OCSP request body; real ones are ~100 bytes.
const maxOCSPRequest = 16 << 10

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
	if s.cluster != nil {
		checks["cluster"] = "ok"
		if err := s.cluster.Healthy(); err != nil {
			ready, checks["cluster"] = false, err.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(readiness{Ready: ready, Checks: checks})
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
		s.metrics.CRL(telemetry.ResultBadRequest)
		http.Error(w, "CRL path must be /crl/ISSUER/SHARD.crl", http.StatusNotFound)
		return
	}
	authority, err := s.authority()
	if err != nil {
		s.metrics.CRL(telemetry.ResultSealed)
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	doc, err := authority.CRLInfo(r.Context(), r.PathValue("issuer"), shard)
	if err != nil {
		s.metrics.CRL(telemetry.ErrorResult(err))
		s.httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	if cacheHeaders(w, r, doc.ThisUpdate, doc.NextUpdate, doc.ETag, time.Now()) {
		s.metrics.CRL(telemetry.ResultNotModified)
		return
	}
	s.metrics.CRL(telemetry.ResultOK)
	_, _ = w.Write(doc.DER)
}

// cacheHeaders sets the HTTP caching headers of a signed document valid
// from thisUpdate to nextUpdate (RFC 5019 6.2 for OCSP; the same for
// CRLs), and answers 304 when a GET's If-None-Match names etag (it then
// returns true and the caller writes nothing more).
func cacheHeaders(w http.ResponseWriter, r *http.Request, thisUpdate, nextUpdate time.Time, etag string, now time.Time) bool {
	h := w.Header()
	maxAge := int64(nextUpdate.Sub(now) / time.Second)
	if maxAge < 0 {
		maxAge = 0
	}
	// must-revalidate: a cache never serves a response past its
	// nextUpdate, which relying parties would reject anyway.
	h.Set("Cache-Control", "public, max-age="+strconv.FormatInt(maxAge, 10)+", no-transform, must-revalidate")
	h.Set("Last-Modified", thisUpdate.UTC().Format(http.TimeFormat))
	h.Set("Expires", nextUpdate.UTC().Format(http.TimeFormat))
	h.Set("ETag", etag)
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && etagMatches(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return true
	}
	return false
}

// etagMatches is If-None-Match's weak comparison (RFC 9110 13.1.2).
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == strings.TrimPrefix(etag, "W/") && t != "" {
			return true
		}
	}
	return false
}

func (s *Server) handleOCSPGet(w http.ResponseWriter, r *http.Request) {
	// RFC 6960 A.1: GET {url}/{url-encoding of base-64 encoding of the DER}.
	raw := r.PathValue("req")
	if unescaped, err := url.PathUnescape(raw); err == nil {
		raw = unescaped
	}
	if len(raw) > maxOCSPRequest {
		s.metrics.OCSP(telemetry.ResultTooLarge)
		http.Error(w, "OCSP request too large", http.StatusRequestEntityTooLarge)
		return
	}
	req, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		s.metrics.OCSP(ca.OCSPMalformed)
		http.Error(w, "OCSP GET request is not base64", http.StatusBadRequest)
		return
	}
	s.answerOCSP(w, r, req)
}

func (s *Server) handleOCSPPost(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOCSPRequest))
	if err != nil {
		s.metrics.OCSP(telemetry.ResultTooLarge)
		http.Error(w, "OCSP request too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	s.answerOCSP(w, r, body)
}

func (s *Server) answerOCSP(w http.ResponseWriter, r *http.Request, req []byte) {
	authority, err := s.authority()
	if err != nil {
		s.metrics.OCSP(telemetry.ResultSealed)
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	ans, err := authority.OCSPAnswer(r.Context(), req)
	if err != nil {
		s.metrics.OCSP(telemetry.ErrorResult(err))
		s.httpError(w, err)
		return
	}
	s.metrics.OCSP(ans.Result)
	w.Header().Set("Content-Type", "application/ocsp-response")
	switch {
	case ans.Nonce:
		// Unique to its request (RFC 8954): no cache may reuse it.
		w.Header().Set("Cache-Control", "no-store")
	case !ans.ThisUpdate.IsZero():
		sum := sha256.Sum256(ans.DER)
		if cacheHeaders(w, r, ans.ThisUpdate, ans.NextUpdate, fmt.Sprintf(`"%x"`, sum[:16]), time.Now()) {
			return
		}
	}
	_, _ = w.Write(ans.DER)
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
