package server

import (
	"context"
	"net/http"
	"net/http/pprof"
	"time"
)

// servePprof serves the Go profiler on the configured loopback address
// until ctx ends. It uses its own mux: importing net/http/pprof for its side
// effect would register on http.DefaultServeMux, which Sigil never serves.
func (s *Server) servePprof(ctx context.Context) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: s.cfg.PprofAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			s.log.Warn("pprof server", "err", err)
		}
	}()
	s.log.Info("pprof serving", "addr", s.cfg.PprofAddr)
}
