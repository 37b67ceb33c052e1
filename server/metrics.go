package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// metrics holds the server's Prometheus collectors in a registry of its own
// (not the global one), so several servers can live in one test process.
type metrics struct {
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
}

func newMetrics(version string) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
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
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sigil_build_info", Help: "Build information.", ConstLabels: prometheus.Labels{"version": version},
	})
	build.Set(1)
	m.reg.MustRegister(m.grpcRequests, m.grpcLatency, m.httpRequests, m.issued, m.transitItemFailures, m.issuanceRefused, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// leaseStats exposes the current activation's lease counters; zero while
// sealed.
func (m *metrics) registerLeaseStats(stats func() (minted, revoked, expired, failures, irrevocable uint64)) {
	counter := func(name, help string, pick func(a, b, c, d, e uint64) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			return float64(pick(stats()))
		})
	}
	m.reg.MustRegister(
		counter("sigil_leases_minted_total", "Secrets minted under a lease.", func(a, _, _, _, _ uint64) uint64 { return a }),
		counter("sigil_leases_revoked_total", "Leases revoked, on request or at expiry.", func(_, b, _, _, _ uint64) uint64 { return b }),
		counter("sigil_leases_expired_total", "Leases revoked by the expiry worker.", func(_, _, c, _, _ uint64) uint64 { return c }),
		counter("sigil_lease_revocation_failures_total", "Failed revocation attempts (retried with backoff).", func(_, _, _, d, _ uint64) uint64 { return d }),
		counter("sigil_leases_irrevocable_total", "Leases given up on after the maximum attempts: see `sigil lease list --irrevocable`.", func(_, _, _, _, e uint64) uint64 { return e }),
	)
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// observe counts one gRPC call. code is the status the caller got (the
// request interceptor passes the mapped one, so a handler's domain error is
// counted under its real code, not Unknown).
//
// A transit batch answers OK even when its items failed: each failure is
// in its result. A batch in which every item failed did nothing, so it is
// counted as the InvalidArgument the same failure gets as a whole call
// (item failures are bad ciphertext, wrong key type, too large, too old a
// version); each failed item is also counted in
// sigil_transit_item_failures_total. Before, such decrypts counted as OK.
func (m *metrics) observe(method string, code codes.Code, d time.Duration, resp any) {
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

func (m *metrics) instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		m.httpRequests.WithLabelValues(route, strconv.Itoa(rec.code)).Inc()
	})
}
