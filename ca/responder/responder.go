// Package responder serves what relying parties fetch to validate a
// certificate: issuer certificates (the AIA caIssuers target), CRLs and
// OCSP (RFC 6960, with RFC 5019 caching). Like Boulder's ocsp/responder it
// is a plain HTTP front end over a small interface the CA satisfies; the
// server mounts its routes on both listeners.
package responder

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/telemetry"
)

// maxOCSPRequest bounds an OCSP request body; real ones are ~100 bytes.
const maxOCSPRequest = 16 << 10

// Authority is what the responder answers from; *ca.Authority satisfies it.
type Authority interface {
	IssuerCertificate(id string) (*x509.Certificate, error)
	CRLInfo(ctx context.Context, issuerID string, shard int) (ca.CRLDocument, error)
	OCSPAnswer(ctx context.Context, reqDER []byte) (ca.OCSPResponse, error)
}

// Metrics counts CRL and OCSP answers by result; *telemetry.Metrics
// satisfies it.
type Metrics interface {
	CRL(result string)
	OCSP(result string)
}

// Responder is the revocation and issuer-certificate front end.
type Responder struct {
	// authority returns the CA, or an error while sigil is sealed.
	authority func() (Authority, error)
	metrics   Metrics
	// httpError writes a domain error; the server owns that one mapping.
	httpError func(http.ResponseWriter, error)
}

// New returns a responder answering from what authority returns at each
// request (the CA exists only while unsealed).
func New(authority func() (Authority, error), m Metrics, httpError func(http.ResponseWriter, error)) *Responder {
	return &Responder{authority: authority, metrics: m, httpError: httpError}
}

// Routes registers the responder's handlers with route, which the caller
// uses to mount and instrument them.
func (p *Responder) Routes(route func(pattern string, h http.HandlerFunc)) {
	route("GET /ca/{file}", p.handleIssuerCert)
	route("GET /crl/{issuer}/{file}", p.handleCRL)
	route("GET /ocsp/{req...}", p.handleOCSPGet)
	route("POST /ocsp", p.handleOCSPPost)
}

// handleIssuerCert serves an issuer certificate as DER, the target of the
// AIA caIssuers URL in every certificate.
func (p *Responder) handleIssuerCert(w http.ResponseWriter, r *http.Request) {
	id, ok := strings.CutSuffix(r.PathValue("file"), ".der")
	if !ok {
		http.NotFound(w, r)
		return
	}
	authority, err := p.authority()
	if err != nil {
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	cert, err := authority.IssuerCertificate(id)
	if err != nil {
		p.httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-cert")
	_, _ = w.Write(cert.Raw)
}

func (p *Responder) handleCRL(w http.ResponseWriter, r *http.Request) {
	shardStr, ok := strings.CutSuffix(r.PathValue("file"), ".crl")
	shard, err := strconv.Atoi(shardStr)
	if !ok || err != nil || shard < 0 {
		p.metrics.CRL(telemetry.ResultBadRequest)
		http.Error(w, "CRL path must be /crl/ISSUER/SHARD.crl", http.StatusNotFound)
		return
	}
	authority, err := p.authority()
	if err != nil {
		p.metrics.CRL(telemetry.ResultSealed)
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	doc, err := authority.CRLInfo(r.Context(), r.PathValue("issuer"), shard)
	if err != nil {
		p.metrics.CRL(telemetry.ErrorResult(err))
		p.httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	if cacheHeaders(w, r, doc.ThisUpdate, doc.NextUpdate, doc.ETag, time.Now()) {
		p.metrics.CRL(telemetry.ResultNotModified)
		return
	}
	p.metrics.CRL(telemetry.ResultOK)
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

func (p *Responder) handleOCSPGet(w http.ResponseWriter, r *http.Request) {
	// RFC 6960 A.1: GET {url}/{url-encoding of base-64 encoding of the DER}.
	raw := r.PathValue("req")
	if unescaped, err := url.PathUnescape(raw); err == nil {
		raw = unescaped
	}
	if len(raw) > maxOCSPRequest {
		p.metrics.OCSP(telemetry.ResultTooLarge)
		http.Error(w, "OCSP request too large", http.StatusRequestEntityTooLarge)
		return
	}
	req, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		p.metrics.OCSP(ca.OCSPMalformed)
		http.Error(w, "OCSP GET request is not base64", http.StatusBadRequest)
		return
	}
	p.answerOCSP(w, r, req)
}

func (p *Responder) handleOCSPPost(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOCSPRequest))
	if err != nil {
		p.metrics.OCSP(telemetry.ResultTooLarge)
		http.Error(w, "OCSP request too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	p.answerOCSP(w, r, body)
}

func (p *Responder) answerOCSP(w http.ResponseWriter, r *http.Request, req []byte) {
	authority, err := p.authority()
	if err != nil {
		p.metrics.OCSP(telemetry.ResultSealed)
		http.Error(w, "sigil is sealed", http.StatusServiceUnavailable)
		return
	}
	ans, err := authority.OCSPAnswer(r.Context(), req)
	if err != nil {
		p.metrics.OCSP(telemetry.ErrorResult(err))
		p.httpError(w, err)
		return
	}
	p.metrics.OCSP(ans.Result)
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
