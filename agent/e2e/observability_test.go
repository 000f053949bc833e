package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/telemetry"
)

// TestMetricsEventsAndWebhook: after an issuance the scraped metrics moved,
// the events stream holds the request and the issuance, and a webhook
// receiver got a correctly signed issued event.
func TestMetricsEventsAndWebhook(t *testing.T) {
	s := startStack(t)
	const secret = "webhook-secret"
	var mu sync.Mutex
	var events []telemetry.Event
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ts, _ := strconv.ParseInt(r.Header.Get(telemetry.TimestampHeader), 10, 64)
		if r.Header.Get(telemetry.SignatureHeader) != telemetry.Sign(secret, ts, body) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var e telemetry.Event
		if err := json.Unmarshal(body, &e); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}))
	defer receiver.Close()

	listen := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	s.startAgent(t, "--allow", "*.example.test", "--consumer", "obs",
		"--http-listen", listen, "--webhook-url", receiver.URL, "--webhook-secret", secret, "--log-format", "json")
	if err := testenv.WaitTCP(listen, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	const name = "observed.example.test"
	s.handshake(t, name)
	waitUntil(t, "the webhook's issued event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range events {
			if e.Type == telemetry.EventIssued && e.Name == name && e.Fingerprint != "" {
				return true
			}
		}
		return false
	})

	fams := scrapeMetrics(t, "http://"+listen+"/metrics")
	if got := metricValue(fams, "certagent_orders_total", map[string]string{"kind": "issue", "result": "success"}); got < 1 {
		t.Errorf("certagent_orders_total{issue,success} = %v after an issuance", got)
	}
	if fam, ok := fams["certagent_acme_request_duration_seconds"]; !ok || len(fam.Metric) == 0 ||
		fam.Metric[0].GetHistogram().GetSampleCount() == 0 {
		t.Error("no ACME request latency recorded after an issuance")
	}
	if got := metricValue(fams, "certagent_requests_total", nil); got < 1 {
		t.Errorf("certagent_requests_total = %v after a recorded miss", got)
	}
	if got := metricValue(fams, "certagent_certificates", nil); got != 1 {
		t.Errorf("certagent_certificates = %v, want 1", got)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + listen + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s = %d", path, resp.StatusCode)
		}
	}

	msgs, err := s.redis.Client.XRange(context.Background(), "certagent:events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		if m.Values["name"] == name {
			seen[m.Values["type"].(string)] = true
		}
	}
	if !seen[telemetry.EventRequested] || !seen[telemetry.EventIssued] {
		t.Errorf("events stream for %s has %v, want requested and issued", name, seen)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 20*time.Second, what, cond)
}

func scrapeMetrics(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return fams
}

// metricValue returns the value of the first sample of name whose labels
// include labels, or -1 when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	fam, ok := fams[name]
	if !ok {
		return -1
	}
next:
	for _, m := range fam.Metric {
		for _, lp := range m.Label {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}
