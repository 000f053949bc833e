package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// scrape fetches /metrics from a Server and parses it as Prometheus does.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return families
}

func counter(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s not exposed", name)
	}
next:
	for _, m := range fam.Metric {
		for _, lp := range m.Label {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				continue next
			}
		}
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		if m.Histogram != nil {
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("metric %s%v not exposed", name, labels)
	return 0
}

func TestMetricsFollowEventsAndServeHealth(t *testing.T) {
	m := NewMetrics()
	var ready atomic.Bool
	srv, err := NewServer("127.0.0.1:0", m, func(context.Context) error {
		if !ready.Load() {
			return errors.New("redis unreachable")
		}
		return nil
	}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, srv.Run)

	hub := NewHub(quiet(), m)
	ctx := context.Background()
	hub.Emit(ctx, Event{Type: EventRequested, Name: "a.example.com", Node: "n1"})
	hub.Emit(ctx, Event{Type: EventIssued, Kind: "issue", Name: "a.example.com", Took: 0.2})
	hub.Emit(ctx, Event{Type: EventFailed, Kind: "renew", Name: "b.example.com", Error: "CA says no"})
	hub.Emit(ctx, Event{Type: EventDenied, Name: "c.example.org"})

	fams := scrape(t, srv.Addr())
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"certagent_requests_total", nil, 1},
		{"certagent_orders_total", map[string]string{"kind": "issue", "result": "success"}, 1},
		{"certagent_orders_total", map[string]string{"kind": "renew", "result": "failure"}, 1},
		{"certagent_orders_total", map[string]string{"kind": "renew", "result": "success"}, 0},
		{"certagent_order_duration_seconds", map[string]string{"kind": "issue"}, 1},
		{"certagent_denied_total", nil, 1},
	} {
		if got := counter(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	get := func(path string) int {
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code := get("/readyz"); code != 503 {
		t.Errorf("/readyz while not ready = %d, want 503", code)
	}
	ready.Store(true)
	if code := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
}

func TestWebhookSignsRetriesAndNeverBlocks(t *testing.T) {
	const secret = "s3cret"
	var mu sync.Mutex
	var received []Event
	var calls atomic.Int64
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ts, _ := strconv.ParseInt(r.Header.Get(TimestampHeader), 10, 64)
		if r.Header.Get(SignatureHeader) != Sign(secret, ts, body) || time.Since(time.Unix(ts, 0)) > time.Minute {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		if calls.Add(1) <= 2 { // the first two deliveries fail
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return
		}
		var e Event
		if err := json.Unmarshal(body, &e); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		received = append(received, e)
		mu.Unlock()
	}))
	defer receiver.Close()

	m := NewMetrics()
	wh, err := NewWebhook(WebhookConfig{URL: receiver.URL, Secret: secret, FirstRetry: 10 * time.Millisecond, Logger: quiet()}, m)
	if err != nil {
		t.Fatal(err)
	}
	wh.Emit(context.Background(), Event{Type: EventIssued, Name: "a.example.com", At: time.Now()})
	drain(wh.Run)
	mu.Lock()
	defer mu.Unlock()
	if len(received) != 1 || received[0].Type != EventIssued || received[0].Name != "a.example.com" {
		t.Fatalf("received %+v after %d calls, want the issued event once", received, calls.Load())
	}

	// A forged signature is what the receiver must be able to tell apart.
	if Sign(secret, 1, []byte("x")) == Sign("other", 1, []byte("x")) || Sign(secret, 1, []byte("x")) == Sign(secret, 2, []byte("x")) {
		t.Error("the signature does not depend on the secret and the timestamp")
	}
	if _, err := NewWebhook(WebhookConfig{URL: receiver.URL}, m); err == nil {
		t.Error("a webhook without a secret must be refused")
	}
}

func TestWebhookQueueDropsWhenFull(t *testing.T) {
	release := make(chan struct{})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer receiver.Close()
	defer close(release)
	m := NewMetrics()
	wh, err := NewWebhook(WebhookConfig{URL: receiver.URL, Secret: "x", QueueSize: 2, Attempts: 1, Grace: 50 * time.Millisecond, Logger: quiet()}, m)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for range 50 {
			wh.Emit(context.Background(), Event{Type: EventRequested, Name: "a.example.com"})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Emit blocked on a slow receiver")
	}
	srv, err := NewServer("127.0.0.1:0", m, func(context.Context) error { return nil }, quiet())
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, srv.Run)
	if got := counter(t, scrape(t, srv.Addr()), "certagent_events_dropped_total", map[string]string{"sink": "webhook"}); got < 40 {
		t.Errorf("%v events dropped, want at least 40 of 50 with a queue of 2", got)
	}
	drain(wh.Run)
}

func TestStreamSinkWritesTheEventsStream(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	sink := NewStreamSink(st, NewMetrics(), quiet())
	hub := NewHub(quiet(), sink)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	hub.Emit(context.Background(), Event{Type: EventIssued, Kind: "issue", Name: "a.example.com",
		Names: []string{"a.example.com"}, NotAfter: at.Add(time.Hour), Fingerprint: "ab", At: at})
	drain(sink.Run)
	msgs, err := r.Client.XRange(context.Background(), st.Keys().Events(), "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("events stream: %v %v", msgs, err)
	}
	v := msgs[0].Values
	var e Event
	if err := json.Unmarshal([]byte(v["data"].(string)), &e); err != nil {
		t.Fatal(err)
	}
	if v["type"] != "issued" || v["name"] != "a.example.com" || e.Fingerprint != "ab" || !e.At.Equal(at) {
		t.Errorf("event entry %v", v)
	}
	if strings.Contains(v["data"].(string), "PRIVATE") {
		t.Error("an event carries key material")
	}
}

// gatherState returns the gauges of the state collector reading st, by name
// with each label as {name=value}.
func gatherState(t *testing.T, st *store.Store) map[string]float64 {
	t.Helper()
	m := NewMetrics()
	if err := m.Register(NewStateCollector(StateConfig{Store: st, Group: "certagent", Logger: quiet()})); err != nil {
		t.Fatal(err)
	}
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.Metric {
			if m.Gauge == nil {
				continue
			}
			key := f.GetName()
			for _, l := range m.Label {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			got[key] = m.GetGauge().GetValue()
		}
	}
	return got
}

func TestStateCountsExpiringApartFromExpired(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	now := time.Now()
	for name, notAfter := range map[string]time.Time{
		"expired.example.com": now.Add(-time.Hour),
		"soon.example.com":    now.Add(72 * time.Hour),
		"later.example.com":   now.Add(30 * 24 * time.Hour),
	} {
		if err := r.Client.ZAdd(context.Background(), st.Keys().Expiry(),
			redis.Z{Score: float64(notAfter.Unix()), Member: name}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	got := gatherState(t, st)
	if got["certagent_certificates"] != 3 || got["certagent_certificates_expired"] != 1 ||
		got["certagent_certificates_expiring_7d"] != 1 {
		t.Errorf("certificates %v, expired %v, expiring within 7 days %v; want 3, 1, 1",
			got["certagent_certificates"], got["certagent_certificates_expired"], got["certagent_certificates_expiring_7d"])
	}
}

func TestStateReportsWaitingNamesAndPeers(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	ctx := context.Background()
	for _, name := range []string{"a.example.com", "b.example.com"} {
		if err := st.WaitForCA(ctx, name, "node-1"); err != nil {
			t.Fatal(err)
		}
	}
	synced := time.Unix(1_700_000_000, 0)
	if err := st.SetPeerStates(ctx, []store.PeerState{
		{ID: "east", URL: "https://east.example.com:8443", Up: true, LastSync: synced},
		{ID: "west", URL: "https://west.example.com:8443"},
	}); err != nil {
		t.Fatal(err)
	}
	got := gatherState(t, st)
	want := map[string]float64{
		"certagent_names_waiting_for_ca":                        2,
		"certagent_peer_up{peer=east}":                          1,
		"certagent_peer_up{peer=west}":                          0,
		"certagent_peer_last_sync_timestamp_seconds{peer=east}": float64(synced.Unix()),
		"certagent_peer_last_sync_timestamp_seconds{peer=west}": 0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (exposed: %v), want %v", k, g, ok, v)
		}
	}
}

// runUntilCleanup runs a component until the test ends.
func runUntilCleanup(t *testing.T, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// drain stops a sink at once: it delivers what is queued within its grace.
func drain(run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = run(ctx)
}
