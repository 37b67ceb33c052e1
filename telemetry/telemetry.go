// Package telemetry holds Sigil's Prometheus collectors: request counters
// and latencies of both transports, issuance and revocation counters, the
// lease manager's counters and a collector that reports the server's state
// (seal, certificate expiries, leases per mount) at scrape time. It keeps
// them in a registry of its own, not the global one, so several servers can
// live in one test process.
package telemetry

import (
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/sigil-ca/sigil/ca"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// Metrics holds the collectors the transports count into.
type Metrics struct {
	reg          *prometheus.Registry
	grpcRequests *prometheus.CounterVec
	grpcLatency  *prometheus.HistogramVec
	httpRequests *prometheus.CounterVec
	issued       prometheus.Counter
	// transitItemFailures counts failed items of transit batches, which
	// fail one by one inside a call that itself succeeds.
	transitItemFailures *prometheus.CounterVec
	// issuanceRefused counts issuance refused because the issuer is revoked
	// or expired (ca.Config.IssuanceRefused): any increase needs an operator.
	issuanceRefused *prometheus.CounterVec
	// ocspRequests and crlRequests count revocation requests by result
	// (an OCSP status, or why no document was served).
	ocspRequests *prometheus.CounterVec
	crlRequests  *prometheus.CounterVec
}

// New returns the collectors, registered with build information and the
// Go runtime and process collectors.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.grpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_grpc_requests_total", Help: "gRPC requests by method and status code.",
	}, []string{"method", "code"})
	m.grpcLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sigil_grpc_request_duration_seconds", Help: "gRPC request latency by method.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"method"})
	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_http_requests_total", Help: "HTTPS requests by route and status code.",
	}, []string{"route", "code"})
	m.issued = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sigil_certificates_issued_total", Help: "Certificates issued.",
	})
	m.transitItemFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_transit_item_failures_total", Help: "Failed items of transit batch calls, by method.",
	}, []string{"method"})
	m.issuanceRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_ca_issuance_refused_total", Help: "Issuance refused because the issuing CA certificate is revoked or expired, by reason.",
	}, []string{"reason"})
	for _, r := range []string{"issuer_revoked", "issuer_expired"} {
		m.issuanceRefused.WithLabelValues(r) // exported as 0 from the start, for alerting
	}
	m.ocspRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_ocsp_requests_total", Help: "OCSP requests by result: good, revoked, unknown, malformed, unauthorized, too_large, sealed, error.",
	}, []string{"result"})
	m.crlRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_crl_requests_total", Help: "CRL requests by result: ok, not_modified, not_found, bad_request, sealed, error.",
	}, []string{"result"})
	b := ReadBuildInfo(version)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sigil_build_info", Help: "Build information: version, commit, Go version.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	build.Set(1)
	m.reg.MustRegister(m.grpcRequests, m.grpcLatency, m.httpRequests, m.issued, m.transitItemFailures, m.issuanceRefused, m.ocspRequests, m.crlRequests, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds collectors of the server's state (see StateCollector and
// LeaseStats).
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Issued counts one issued certificate.
func (m *Metrics) Issued() { m.issued.Inc() }

// IssuanceRefused counts issuance the CA refused, by reason.
func (m *Metrics) IssuanceRefused(reason string) { m.issuanceRefused.WithLabelValues(reason).Inc() }

// OCSP counts one OCSP request by result.
func (m *Metrics) OCSP(result string) { m.ocspRequests.WithLabelValues(result).Inc() }

// CRL counts one CRL request by result.
func (m *Metrics) CRL(result string) { m.crlRequests.WithLabelValues(result).Inc() }

// ObserveGRPC counts one gRPC call. code is the status the caller got (the
// request interceptor passes the mapped one, so a handler's domain error is
// counted under its real code, not Unknown).
//
// A transit batch answers OK even when its items failed: each failure is
// in its result. A batch in which every item failed did nothing, so it is
// counted as the InvalidArgument the same failure gets as a whole call
// (item failures are bad ciphertext, wrong key type, too large, too old a
// version); each failed item is also counted in
// sigil_transit_item_failures_total.
func (m *Metrics) ObserveGRPC(method string, code codes.Code, d time.Duration, resp any) {
	if b, ok := resp.(*sigilv1.TransitBatchResponse); ok && code == codes.OK {
		failed := 0
		for _, r := range b.GetResults() {
			if r.GetError() != "" {
				failed++
			}
		}
		if failed > 0 {
			m.transitItemFailures.WithLabelValues(method).Add(float64(failed))
			if failed == len(b.GetResults()) {
				code = codes.InvalidArgument
			}
		}
	}
	m.grpcLatency.WithLabelValues(method).Observe(d.Seconds())
	m.grpcRequests.WithLabelValues(method, code.String()).Inc()
}

// statusRecorder captures the status code for the request counter.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Instrument counts h's responses under route.
func (m *Metrics) Instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		m.httpRequests.WithLabelValues(route, strconv.Itoa(rec.code)).Inc()
	})
}

// BuildInfo is what the binary knows of its build.
type BuildInfo struct {
	Version   string
	Revision  string // VCS commit, with "-dirty" if modified; "" if unknown
	BuildTime string // VCS commit time (RFC 3339); "" if unknown
	GoVersion string
}

// ReadBuildInfo reads the build's VCS stamp (go build records it when
// built inside a checkout).
func ReadBuildInfo(version string) BuildInfo {
	b := BuildInfo{Version: version}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.GoVersion = bi.GoVersion
	modified := false
	for _, st := range bi.Settings {
		switch st.Key {
		case "vcs.revision":
			b.Revision = st.Value
		case "vcs.time":
			b.BuildTime = st.Value
		case "vcs.modified":
			modified = st.Value == "true"
		}
	}
	if modified && b.Revision != "" {
		b.Revision += "-dirty"
	}
	return b
}

// Results of CRL and OCSP requests in their counters, besides the OCSP
// statuses (ca.OCSPGood …).
const (
	ResultOK          = "ok"
	ResultNotModified = "not_modified"
	ResultBadRequest  = "bad_request"
	ResultNotFound    = "not_found"
	ResultTooLarge    = "too_large"
	ResultSealed      = "sealed"
	ResultError       = "error"
)

// ErrorResult names a CA error for the CRL and OCSP counters.
func ErrorResult(err error) string {
	switch ca.KindOf(err) {
	case ca.KindNotFound:
		return ResultNotFound
	case ca.KindBadRequest, ca.KindBadCSR:
		return ResultBadRequest
	}
	return ResultError
}
