package server

import (
	"context"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage"
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
	// ocspRequests and crlRequests count revocation requests by result
	// (an OCSP status, or why no document was served).
	ocspRequests *prometheus.CounterVec
	crlRequests  *prometheus.CounterVec
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
	m.ocspRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_ocsp_requests_total", Help: "OCSP requests by result: good, revoked, unknown, malformed, unauthorized, too_large, sealed, error.",
	}, []string{"result"})
	m.crlRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_crl_requests_total", Help: "CRL requests by result: ok, not_modified, not_found, bad_request, sealed, error.",
	}, []string{"result"})
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sigil_build_info", Help: "Build information: version, commit, Go version.", ConstLabels: func() prometheus.Labels {
			b := readBuildInfo(version)
			return prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion}
		}(),
	})
	build.Set(1)
	m.reg.MustRegister(m.grpcRequests, m.grpcLatency, m.httpRequests, m.issued, m.transitItemFailures, m.issuanceRefused, m.ocspRequests, m.crlRequests, build,
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

// stateCollector exports the server's state at scrape time: seal state,
// the expiry of every CA certificate and of the listeners' certificate,
// and the active and irrevocable leases of each mount. Its cardinality is
// bounded by the issuers and the mounts, never by requests or leases.
type stateCollector struct {
	sealed, initialized      *prometheus.Desc
	certExpiry, certNotAfter *prometheus.Desc
	leasesActive             *prometheus.Desc
	leasesIrrevocable        *prometheus.Desc
	state                    func() stateSnapshot
}

// stateSnapshot is what one scrape reports.
type stateSnapshot struct {
	sealed, initialized bool
	// certs are the CA certificates and the listener certificate, each
	// with its kind (root, intermediate, listener) and id.
	certs []stateCert
	// leases are counted per mount, for every mount (zero included); nil
	// when storage did not answer (nothing is exported rather than zero).
	leases map[string]leaseCounts
	now    time.Time
}

type stateCert struct {
	kind, id string
	notAfter time.Time
}

type leaseCounts struct{ active, irrevocable int }

func newStateCollector(state func() stateSnapshot) *stateCollector {
	return &stateCollector{
		sealed:       prometheus.NewDesc("sigil_sealed", "1 while the server is sealed, 0 while unsealed.", nil, nil),
		initialized:  prometheus.NewDesc("sigil_initialized", "1 once the server is initialised (operator init), else 0.", nil, nil),
		certExpiry:   prometheus.NewDesc("sigil_certificate_expiry_seconds", "Seconds until the certificate's notAfter (negative once expired), by kind (root, intermediate, listener) and id (the issuer id, or the listener's serial).", []string{"kind", "id"}, nil),
		certNotAfter: prometheus.NewDesc("sigil_certificate_not_after_timestamp_seconds", "The certificate's notAfter as a Unix time, by kind and id.", []string{"kind", "id"}, nil),
		leasesActive: prometheus.NewDesc("sigil_leases_active", "Active leases, by engine mount.", []string{"mount"}, nil),
		leasesIrrevocable: prometheus.NewDesc("sigil_leases_irrevocable", "Leases given up on after the maximum revocation attempts, by engine mount: see `sigil lease list --irrevocable`.",
			[]string{"mount"}, nil),
		state: state,
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sealed, c.initialized, c.certExpiry, c.certNotAfter, c.leasesActive, c.leasesIrrevocable} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.state()
	ch <- prometheus.MustNewConstMetric(c.sealed, prometheus.GaugeValue, boolFloat(st.sealed))
	ch <- prometheus.MustNewConstMetric(c.initialized, prometheus.GaugeValue, boolFloat(st.initialized))
	for _, ct := range st.certs {
		ch <- prometheus.MustNewConstMetric(c.certExpiry, prometheus.GaugeValue, ct.notAfter.Sub(st.now).Seconds(), ct.kind, ct.id)
		ch <- prometheus.MustNewConstMetric(c.certNotAfter, prometheus.GaugeValue, float64(ct.notAfter.Unix()), ct.kind, ct.id)
	}
	for mount, n := range st.leases {
		ch <- prometheus.MustNewConstMetric(c.leasesActive, prometheus.GaugeValue, float64(n.active), mount)
		ch <- prometheus.MustNewConstMetric(c.leasesIrrevocable, prometheus.GaugeValue, float64(n.irrevocable), mount)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// scrapeTimeout bounds the storage reads of one scrape.
const scrapeTimeout = 5 * time.Second

// maxIrrevocableScan bounds the irrevocable leases one scrape reads; they
// are kept until an operator deals with them, so there are normally few.
const maxIrrevocableScan = 100000

// stateSnapshot reads the server's state for a scrape.
func (s *Server) stateSnapshot() stateSnapshot {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	snap := stateSnapshot{sealed: true, now: time.Now()}
	if s.core != nil {
		st := s.core.Status()
		snap.sealed, snap.initialized = st.Sealed(), st.Initialized
		if a := st.Unsealed; a != nil && a.CA != nil {
			for _, is := range a.CA.Issuers() {
				snap.certs = append(snap.certs, stateCert{kind: is.Kind, id: is.ID, notAfter: is.Certificate.NotAfter})
			}
		}
	}
	if s.listenerCert != nil {
		if leaf := s.listenerCert(); leaf != nil {
			snap.certs = append(snap.certs, stateCert{kind: "listener", id: leaf.SerialNumber.Text(16), notAfter: leaf.NotAfter})
		}
	}
	if s.store != nil {
		leases, err := s.leaseCounts(ctx)
		if err != nil {
			s.log.Warn("metrics: counting leases failed", "err", err)
		}
		snap.leases = leases
	}
	return snap
}

// leaseCounts counts active and irrevocable leases per mount. Mount paths
// and lease states are stored in the clear, so this works while sealed.
func (s *Server) leaseCounts(ctx context.Context) (map[string]leaseCounts, error) {
	mounts, err := s.store.Mounts().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	out := make(map[string]leaseCounts, len(mounts))
	for _, m := range mounts {
		n, err := s.store.Leases().CountActive(ctx, m.Path+"/")
		if err != nil {
			return nil, fmt.Errorf("count active leases of %s: %w", m.Path, err)
		}
		out[m.Path] = leaseCounts{active: n}
	}
	after := ""
	for scanned := 0; scanned < maxIrrevocableScan; {
		page, next, err := s.store.Leases().List(ctx, storage.LeaseFilter{State: storage.LeaseIrrevocable, After: after, Limit: 1000})
		if err != nil {
			return nil, fmt.Errorf("list irrevocable leases: %w", err)
		}
		for _, l := range page {
			if c, ok := out[l.Mount]; ok {
				c.irrevocable++
				out[l.Mount] = c
			}
		}
		scanned += len(page)
		if next == "" || len(page) == 0 {
			break
		}
		after = next
	}
	return out, nil
}

// BuildInfo is what the binary knows of its build.
type BuildInfo struct {
	Version   string
	Revision  string // VCS commit, with "-dirty" if modified; "" if unknown
	BuildTime string // VCS commit time (RFC 3339); "" if unknown
	GoVersion string
}

// readBuildInfo reads the build's VCS stamp (go build records it when
// built inside a checkout).
func readBuildInfo(version string) BuildInfo {
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
