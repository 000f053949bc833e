package telemetry

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/certagent/certagent/agent/store"
)

// Metrics holds the agent's Prometheus collectors in a registry of its own.
// It is a Sink: counters move with the events.
type Metrics struct {
	Registry *prometheus.Registry

	orders        *prometheus.CounterVec
	orderDuration *prometheus.HistogramVec
	requests      prometheus.Counter
	denied        prometheus.Counter
	refused       *prometheus.CounterVec
	busy          prometheus.Counter
	revoked       prometheus.Counter
	deleted       prometheus.Counter
	acmeRequests  *prometheus.HistogramVec
	dropped       func(sink string)
}

// NewMetrics registers the collectors, with Go and process metrics.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certagent_orders_total",
			Help: "Certificate orders finished, by kind (issue, renew) and result (success, failure).",
		}, []string{"kind", "result"}),
		orderDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "certagent_order_duration_seconds",
			Help:    "How long successful orders took, from the lease to the stored certificate.",
			Buckets: []float64{.025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"kind"}),
		acmeRequests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "certagent_acme_request_duration_seconds",
			Help:    "HTTP requests to the ACME CA, by method and result (ok: an HTTP answer came, error: none did).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method", "result"}),
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certagent_requests_total",
			Help: "Names read from the stream of requests: taken up (an event requested each), or refused (also in certagent_refused_total).",
		}),
		denied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certagent_denied_total",
			Help: "Requested names refused by the policy or a pre-flight check.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "certagent_refused_total",
			Help: "Requested names refused without an event each, by kind: policy (no allow rule allows them) or invalid (not a valid host name).",
		}, []string{"kind"}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certagent_lease_busy_total",
			Help: "Orders not started because another agent held the name's lease.",
		}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certagent_revoked_total",
			Help: "Certificates revoked at the CA.",
		}),
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "certagent_deleted_total",
			Help: "Certificates removed from the store.",
		}),
	}
	droppedVec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "certagent_events_dropped_total",
		Help: "Events a sink dropped because its queue was full.",
	}, []string{"sink"})
	m.dropped = func(sink string) { droppedVec.WithLabelValues(sink).Inc() }
	reg.MustRegister(m.acmeRequests, m.orders, m.orderDuration, m.requests, m.denied, m.refused, m.busy, m.revoked, m.deleted, droppedVec,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, kind := range []string{store.RefusedByPolicy, store.RefusedInvalid} {
		m.refused.WithLabelValues(kind) // present at 0 from the start
	}
	for _, kind := range []string{"issue", "renew"} {
		for _, result := range []string{"success", "failure"} {
			m.orders.WithLabelValues(kind, result) // present at 0 from the start
		}
	}
	return m
}

// Emit counts e.
func (m *Metrics) Emit(_ context.Context, e Event) {
	switch e.Type {
	case EventRequested:
		m.requests.Inc()
	case EventDenied:
		m.denied.Inc()
	case EventRefused:
		m.requests.Inc()
		m.refused.WithLabelValues(e.Kind).Inc()
		if e.Kind == store.RefusedByPolicy {
			m.denied.Inc()
		}
	case EventBusy:
		m.busy.Inc()
	case EventIssued:
		m.orders.WithLabelValues("issue", "success").Inc()
		m.orderDuration.WithLabelValues("issue").Observe(e.Took)
	case EventRenewed:
		m.orders.WithLabelValues("renew", "success").Inc()
		m.orderDuration.WithLabelValues("renew").Observe(e.Took)
	case EventFailed:
		kind := e.Kind
		if kind != "renew" {
			kind = "issue"
		}
		m.orders.WithLabelValues(kind, "failure").Inc()
	case EventRevoked:
		m.revoked.Inc()
	case EventDeleted:
		m.deleted.Inc()
	}
}

// ObserveACMERequest records one HTTP request to the CA; it fits
// acmeclient.Config.ObserveRequest.
func (m *Metrics) ObserveACMERequest(method string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.acmeRequests.WithLabelValues(method, result).Observe(took.Seconds())
}

// Register adds c, e.g. a collector of state read from Redis at scrape time.
func (m *Metrics) Register(c prometheus.Collector) error { return m.Registry.Register(c) }
