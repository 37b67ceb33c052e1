package telemetry

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-ca/sigil/core"
)

// scrapeTimeout bounds the storage reads of one scrape.
const scrapeTimeout = 5 * time.Second

// LeaseStats exposes the current activation's lease counters; zero while
// sealed.
func LeaseStats(c *core.Core) []prometheus.Collector {
	counter := func(name, help string, pick func(st leaseStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			if u := c.Current(); u != nil && u.Leases != nil {
				s := u.Leases.Stats()
				return float64(pick(leaseStats{s.Minted, s.Revoked, s.Expired, s.Failures, s.Irrevocable}))
			}
			return 0
		})
	}
	return []prometheus.Collector{
		counter("sigil_leases_minted_total", "Secrets minted under a lease.", func(s leaseStats) uint64 { return s.minted }),
		counter("sigil_leases_revoked_total", "Leases revoked, on request or at expiry.", func(s leaseStats) uint64 { return s.revoked }),
		counter("sigil_leases_expired_total", "Leases revoked by the expiry worker.", func(s leaseStats) uint64 { return s.expired }),
		counter("sigil_lease_revocation_failures_total", "Failed revocation attempts (retried with backoff).", func(s leaseStats) uint64 { return s.failures }),
		counter("sigil_leases_irrevocable_total", "Leases given up on after the maximum attempts: see `sigil lease list --irrevocable`.", func(s leaseStats) uint64 { return s.irrevocable }),
	}
}

type leaseStats struct{ minted, revoked, expired, failures, irrevocable uint64 }

// StateCollector exports the server's state at scrape time: seal state,
// the expiry of every CA certificate and of the listeners' certificate,
// and the active and irrevocable leases of each mount. Its cardinality is
// bounded by the issuers and the mounts, never by requests or leases.
type StateCollector struct {
	sealed, initialized      *prometheus.Desc
	certExpiry, certNotAfter *prometheus.Desc
	leasesActive             *prometheus.Desc
	leasesIrrevocable        *prometheus.Desc

	core *core.Core
	// listener returns the listeners' current certificate (nil if none).
	listener func() *x509.Certificate
	log      *slog.Logger
}

// NewStateCollector reports c's state and the listeners' certificate.
func NewStateCollector(c *core.Core, listener func() *x509.Certificate, log *slog.Logger) *StateCollector {
	return &StateCollector{
		sealed:       prometheus.NewDesc("sigil_sealed", "1 while the server is sealed, 0 while unsealed.", nil, nil),
		initialized:  prometheus.NewDesc("sigil_initialized", "1 once the server is initialised (operator init), else 0.", nil, nil),
		certExpiry:   prometheus.NewDesc("sigil_certificate_expiry_seconds", "Seconds until the certificate's notAfter (negative once expired), by kind (root, intermediate, listener) and id (the issuer id, or the listener's serial).", []string{"kind", "id"}, nil),
		certNotAfter: prometheus.NewDesc("sigil_certificate_not_after_timestamp_seconds", "The certificate's notAfter as a Unix time, by kind and id.", []string{"kind", "id"}, nil),
		leasesActive: prometheus.NewDesc("sigil_leases_active", "Active leases, by engine mount.", []string{"mount"}, nil),
		leasesIrrevocable: prometheus.NewDesc("sigil_leases_irrevocable", "Leases given up on after the maximum revocation attempts, by engine mount: see `sigil lease list --irrevocable`.",
			[]string{"mount"}, nil),
		core: c, listener: listener, log: log,
	}
}

// Describe implements prometheus.Collector.
func (c *StateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sealed, c.initialized, c.certExpiry, c.certNotAfter, c.leasesActive, c.leasesIrrevocable} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *StateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	now := time.Now()
	st := c.core.Status()
	ch <- prometheus.MustNewConstMetric(c.sealed, prometheus.GaugeValue, boolFloat(st.Sealed()))
	ch <- prometheus.MustNewConstMetric(c.initialized, prometheus.GaugeValue, boolFloat(st.Initialized))
	cert := func(kind, id string, notAfter time.Time) {
		ch <- prometheus.MustNewConstMetric(c.certExpiry, prometheus.GaugeValue, notAfter.Sub(now).Seconds(), kind, id)
		ch <- prometheus.MustNewConstMetric(c.certNotAfter, prometheus.GaugeValue, float64(notAfter.Unix()), kind, id)
	}
	if u := st.Unsealed; u != nil && u.CA != nil {
		for _, is := range u.CA.Issuers() {
			cert(is.Kind, is.ID, is.Certificate.NotAfter)
		}
	}
	if c.listener != nil {
		if leaf := c.listener(); leaf != nil {
			cert("listener", leaf.SerialNumber.Text(16), leaf.NotAfter)
		}
	}
	// Nothing is exported rather than zero when storage does not answer.
	leases, err := c.core.LeaseCounts(ctx)
	if err != nil {
		c.log.Warn("metrics: counting leases failed", "err", err)
	}
	for mount, n := range leases {
		ch <- prometheus.MustNewConstMetric(c.leasesActive, prometheus.GaugeValue, float64(n.Active), mount)
		ch <- prometheus.MustNewConstMetric(c.leasesIrrevocable, prometheus.GaugeValue, float64(n.Irrevocable), mount)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
