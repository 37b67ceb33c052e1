package agent

import (
	"fmt"
	"net/http"
	"time"
)

// healthHandler serves /healthz (200 while the agent holds a valid node
// SVID and a bundle) and /metrics (Prometheus text format).
func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		cert, _ := a.node.current()
		a.st.mu.RLock()
		haveBundle := a.st.x509 != nil
		a.st.mu.RUnlock()
		switch {
		case cert == nil || !time.Now().Before(cert.Leaf.NotAfter):
			http.Error(w, "node SVID missing or expired", http.StatusServiceUnavailable)
		case !haveBundle:
			http.Error(w, "no trust bundle yet", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		cert, _ := a.node.current()
		st := a.st
		st.mu.RLock()
		var next time.Time
		for _, c := range st.svids {
			if na := c.svid.Certificates[0].NotAfter; next.IsZero() || na.Before(next) {
				next = na
			}
		}
		entries, svids, last, failures := len(st.entries), len(st.svids), st.lastSync, st.failures
		renderFailures, failing := st.renderFailures, len(st.failing)
		st.mu.RUnlock()
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP sigil_agent_node_svid_expiry_timestamp_seconds When the node SVID expires.\n# TYPE sigil_agent_node_svid_expiry_timestamp_seconds gauge\n")
		if cert != nil {
			fmt.Fprintf(w, "sigil_agent_node_svid_expiry_timestamp_seconds %d\n", cert.Leaf.NotAfter.Unix())
		}
		fmt.Fprintf(w, "# HELP sigil_agent_next_svid_expiry_timestamp_seconds When the first workload SVID in the cache expires.\n# TYPE sigil_agent_next_svid_expiry_timestamp_seconds gauge\n")
		if !next.IsZero() {
			fmt.Fprintf(w, "sigil_agent_next_svid_expiry_timestamp_seconds %d\n", next.Unix())
		}
		fmt.Fprintf(w, "# HELP sigil_agent_cache_age_seconds Seconds since the last successful sync with the server.\n# TYPE sigil_agent_cache_age_seconds gauge\n")
		if !last.IsZero() {
			fmt.Fprintf(w, "sigil_agent_cache_age_seconds %.3f\n", time.Since(last).Seconds())
		}
		fmt.Fprintf(w, "# HELP sigil_agent_entries Registration entries of this node.\n# TYPE sigil_agent_entries gauge\nsigil_agent_entries %d\n", entries)
		fmt.Fprintf(w, "# HELP sigil_agent_svids Workload X.509-SVIDs in the cache.\n# TYPE sigil_agent_svids gauge\nsigil_agent_svids %d\n", svids)
		fmt.Fprintf(w, "# HELP sigil_agent_sync_failures_total Failed syncs with the server.\n# TYPE sigil_agent_sync_failures_total counter\nsigil_agent_sync_failures_total %d\n", failures)
		fmt.Fprintf(w, "# HELP sigil_agent_render_failures_total Failed template renders (the previous file is kept).\n# TYPE sigil_agent_render_failures_total counter\nsigil_agent_render_failures_total %d\n", renderFailures)
		fmt.Fprintf(w, "# HELP sigil_agent_templates_failing Templates whose last render failed.\n# TYPE sigil_agent_templates_failing gauge\nsigil_agent_templates_failing %d\n", failing)
	})
	return mux
}
