package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server serves /metrics, /healthz (the process answers) and /readyz (the
// agent can work: ready returns nil).
type Server struct {
	srv      *http.Server
	listener net.Listener
	log      *slog.Logger
}

// NewServer listens on addr at once, so a port in use is reported at start.
func NewServer(addr string, metrics *Metrics, ready func(context.Context) error, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics and health on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return &Server{
		srv:      &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		listener: l,
		log:      log,
	}, nil
}

// Addr is where the server listens.
func (s *Server) Addr() string { return s.listener.Addr().String() }

// serverShutdown bounds the wait for the requests in flight once the
// server is stopped.
const serverShutdown = 2 * time.Second

// Run serves until ctx ends, then waits up to 2 s for the requests in
// flight. A server that fails is logged, not returned: issuance goes on
// without its endpoints.
func (s *Server) Run(ctx context.Context) error {
	go func() {
		if err := s.srv.Serve(s.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics and health endpoint stopped; issuance goes on", "error", err)
		}
	}()
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), serverShutdown)
	defer cancel()
	_ = s.srv.Shutdown(shutdownCtx)
	return nil
}
