package telemetry

import (
	"context"
	"log/slog"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/certagent/certagent/agent/store"
)

// StateConfig says where the state collector reads from.
type StateConfig struct {
	Store *store.Store
	Group string // the consumer group of the agents
	// OrdersLeft reports the account's order budget; nil leaves it out.
	OrdersLeft func(context.Context) (int, error)
	Logger     *slog.Logger
}

var (
	descStream   = prometheus.NewDesc("certagent_requests_stream_length", "Entries in the stream of requested names.", nil, nil)
	descPending  = prometheus.NewDesc("certagent_requests_pending", "Requested names delivered to an agent and not yet handled.", nil, nil)
	descCerts    = prometheus.NewDesc("certagent_certificates", "Stored certificates (primary names).", nil, nil)
	descExpired  = prometheus.NewDesc("certagent_certificates_expired", "Stored certificates past their not-after.", nil, nil)
	descExpiring = prometheus.NewDesc("certagent_certificates_expiring_7d", "Stored certificates not expired yet that expire within 7 days.", nil, nil)
	descEarliest = prometheus.NewDesc("certagent_certificate_earliest_expiry_timestamp_seconds", "The not-after of the certificate that expires first.", nil, nil)
	descBudget   = prometheus.NewDesc("certagent_order_budget_left", "New orders the fleet's budget for the ACME account allows now.", nil, nil)
	descWaiting  = prometheus.NewDesc("certagent_names_waiting_for_ca", "Requested names held until a CA the fleet found down answers again.", nil, nil)
	descPeerUp   = prometheus.NewDesc("certagent_peer_up", "Whether the last call of this site's agents to the peer site was answered (1) or not (0).", []string{"peer"}, nil)
	descPeerSync = prometheus.NewDesc("certagent_peer_last_sync_timestamp_seconds", "The last inventory exchange with the peer site (0: none since its agent started).", []string{"peer"}, nil)
)

// stateCollector reads the fleet's state from Redis at scrape time, with a
// few O(log n) commands and no key scans.
type stateCollector struct {
	cfg StateConfig
}

// NewStateCollector returns a collector for cfg, to Register with Metrics.
func NewStateCollector(cfg StateConfig) prometheus.Collector {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &stateCollector{cfg: cfg}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStream, descPending, descCerts, descExpired, descExpiring, descEarliest, descBudget,
		descWaiting, descPeerUp, descPeerSync} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	// A failed read leaves its gauges out of this scrape: absent, not zero.
	if st, err := c.cfg.Store.StreamStatus(ctx, c.cfg.Group); err == nil {
		gauge(descStream, float64(st.Length))
		gauge(descPending, float64(st.Pending))
	} else {
		c.cfg.Logger.Warn("metrics: reading the stream", "error", err)
	}
	now := time.Now()
	if total, upTo, err := c.cfg.Store.CertCounts(ctx, now.Unix(), now.Add(7*24*time.Hour).Unix()); err == nil {
		gauge(descCerts, float64(total))
		gauge(descExpired, float64(upTo[0]))
		// Not yet expired, as `certagent status` counts them: an expired
		// certificate is in certagent_certificates_expired only.
		gauge(descExpiring, float64(upTo[1]-upTo[0]))
	} else {
		c.cfg.Logger.Warn("metrics: counting certificates", "error", err)
	}
	if first, err := c.cfg.Store.ListExpiring(ctx, time.Unix(math.MaxInt64/2, 0), 1); err == nil && len(first) == 1 {
		gauge(descEarliest, float64(first[0].NotAfter.Unix()))
	}
	if n, err := c.cfg.Store.CountWaitingForCA(ctx); err == nil {
		gauge(descWaiting, float64(n))
	} else {
		c.cfg.Logger.Warn("metrics: counting the names waiting for the CA", "error", err)
	}
	c.collectPeers(ctx, ch)
	if c.cfg.OrdersLeft != nil {
		if left, err := c.cfg.OrdersLeft(ctx); err == nil {
			gauge(descBudget, float64(left))
		}
	}
}

// collectPeers reports the site's recorded view of its peer sites (the one
// `certagent peers` shows): none without peers, and none for a record that
// does not parse.
func (c *stateCollector) collectPeers(ctx context.Context, ch chan<- prometheus.Metric) {
	peers, err := c.cfg.Store.PeerStates(ctx)
	if err != nil {
		c.cfg.Logger.Warn("metrics: reading the state of the peer sites", "error", err)
	}
	for _, p := range peers {
		if p.URL == "" {
			continue // a record that did not parse: its ID only
		}
		up := 0.0
		if p.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descPeerUp, prometheus.GaugeValue, up, p.ID)
		var synced float64
		if !p.LastSync.IsZero() {
			synced = float64(p.LastSync.Unix())
		}
		ch <- prometheus.MustNewConstMetric(descPeerSync, prometheus.GaugeValue, synced, p.ID)
	}
}
