package nginxtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/internal/testenv"
)

// scrape reads the status location and returns every series as
// "name{label="value"}" to its value, after parsing the text with the
// Prometheus parser.
func (e *env) scrape() map[string]float64 {
	e.t.Helper()
	resp, err := http.Get("http://" + e.nginx.HTTPAddr + "/certagent-status")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		e.t.Fatalf("status location: %d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		e.t.Fatalf("status location Content-Type %q", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		e.t.Fatalf("status text does not parse: %v\n%s", err, body)
	}
	out := map[string]float64{}
	for name, f := range families {
		gauge := gauges[name]
		if want := map[bool]dto.MetricType{false: dto.MetricType_COUNTER, true: dto.MetricType_GAUGE}[gauge]; f.GetType() != want {
			e.t.Errorf("%s is a %s, want a %s", name, f.GetType(), want)
		}
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += fmt.Sprintf("{%s=%q}", l.GetName(), l.GetValue())
			}
			if gauge {
				out[key] = m.GetGauge().GetValue()
			} else {
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// gauges are the status series that are not counters: the handshakes held
// per worker by the first handshake's wait, now and at most.
var gauges = map[string]bool{"certagent_nginx_waiting": true, "certagent_nginx_waiting_highest": true}

// TestStatusLocation: the counters of nginx/certagent-status.conf move with a
// miss, hits from Redis, the worker's cache and the shared dict, challenges
// and a Redis outage, and the text is valid Prometheus exposition. The
// worker's cache holds one certificate, so a second name evicts the first
// from it but not from the shared dict.
func TestStatusLocation(t *testing.T) {
	schema, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t)
	prefix := "st" + strconv.Itoa(os.Getpid()%1000) + ":"
	n := testenv.StartNginx(t, testenv.NginxOptions{
		RedisURL:        r.URL,
		KeyPrefix:       prefix,
		Env:             map[string]string{"CERTAGENT_NODE": testNode},
		LuaConfig:       map[string]string{"lru_size": "1"},
		HTTPServerExtra: "include " + filepath.Join(testenv.RepoRoot(), "nginx", "certagent-status.conf") + ";",
	})
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CERTAGENT_SHOW_NGINX_LOG") != "" {
			t.Logf("nginx error log:\n%s", n.ErrorLog())
		}
	})
	e := &env{t: t, redis: r, nginx: n, prefix: prefix, schema: schema}
	const (
		served   = "certagent_nginx_certificates_served_total"
		lru      = served + `{source="worker_lru"}`
		shared   = served + `{source="shared_dict"}`
		fromRed  = served + `{source="redis"}`
		stale    = served + `{source="stale"}`
		misses   = "certagent_nginx_misses_total"
		fallback = "certagent_nginx_fallback_total"
		recorded = "certagent_nginx_names_recorded_total"
		rerrors  = "certagent_nginx_redis_errors_total"
		chHit    = `certagent_nginx_challenges_total{result="hit"}`
		chMiss   = `certagent_nginx_challenges_total{result="miss"}`
	)
	want := func(what string, expected map[string]float64) {
		t.Helper()
		got := e.scrape()
		for k, v := range expected {
			if got[k] != v {
				t.Errorf("%s: %s = %v, want %v (all: %v)", what, k, got[k], v, got)
			}
		}
	}
	zero := map[string]float64{lru: 0, shared: 0, fromRed: 0, stale: 0, misses: 0, fallback: 0, recorded: 0,
		rerrors: 0, chHit: 0, chMiss: 0}
	got := e.scrape()
	for k := range zero {
		if _, ok := got[k]; !ok {
			t.Errorf("the status text has no series %s before any traffic", k)
		}
	}
	want("before any traffic", zero)

	// A name without a certificate: a miss, the fallback, one name recorded.
	if c := e.mustHandshake("missing.status.test"); !e.isFallback(c) {
		t.Fatalf("missing.status.test: served %q, want the fallback", c.Subject.CommonName)
	}
	waitFor(t, "the recorded name to be counted", func() bool { return e.scrape()[recorded] == 1 })
	want("after a miss", map[string]float64{misses: 1, fallback: 1, recorded: 1, fromRed: 0, lru: 0})

	// A stored certificate: first from Redis, then from the worker's cache.
	// The records are written without a changes entry: reading one would
	// drop the name from the caches between two handshakes, whenever the
	// worker's poll happens to run.
	l := newLeaf(t, "status", []string{"hit.status.test"}, time.Now().Add(24*time.Hour))
	e.storeUnannounced("hit.status.test", l)
	if c := e.mustHandshake("hit.status.test"); !c.Equal(l.cert) {
		t.Fatalf("hit.status.test: served %q, want the stored certificate", c.Subject.CommonName)
	}
	want("after a first hit", map[string]float64{fromRed: 1, lru: 0, misses: 1, fallback: 1})
	if c := e.mustHandshake("hit.status.test"); !c.Equal(l.cert) {
		t.Fatalf("hit.status.test again: served %q, want the stored certificate", c.Subject.CommonName)
	}
	want("after a second hit", map[string]float64{fromRed: 1, lru: 1, misses: 1, fallback: 1})

	// Another name takes the worker cache's only place; the first one is then
	// found in the shared dict.
	other := newLeaf(t, "status other", []string{"other.status.test"}, time.Now().Add(24*time.Hour))
	e.storeUnannounced("other.status.test", other)
	if c := e.mustHandshake("other.status.test"); !c.Equal(other.cert) {
		t.Fatalf("other.status.test: served %q, want the stored certificate", c.Subject.CommonName)
	}
	if c := e.mustHandshake("hit.status.test"); !c.Equal(l.cert) {
		t.Fatalf("hit.status.test after an eviction: served %q, want the stored certificate", c.Subject.CommonName)
	}
	want("after a hit in the shared dict", map[string]float64{fromRed: 2, lru: 1, shared: 1, misses: 1, fallback: 1})

	// Challenges.
	if err := e.redis.Client.Set(context.Background(),
		e.key("token", "name", challengeHost, "token", challengeToken), keyAuth, 600*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	if status, _, _ := e.request("GET", challengeHost, "/.well-known/acme-challenge/"+challengeToken); status != 200 {
		t.Fatalf("challenge: %d, want 200", status)
	}
	if status, _, _ := e.request("GET", challengeHost, "/.well-known/acme-challenge/not-a-token"); status != 404 {
		t.Fatalf("unknown challenge: %d, want 404", status)
	}
	want("after two challenges", map[string]float64{chHit: 1, chMiss: 1})

	// Redis down: a name nginx has not cached gets the fallback and counts a
	// Redis error.
	e.redis.Stop()
	if c := e.mustHandshake("outage.status.test"); !e.isFallback(c) {
		t.Fatalf("outage.status.test with Redis down: served %q, want the fallback", c.Subject.CommonName)
	}
	got = e.scrape()
	if got[rerrors] < 1 || got[fallback] != 2 {
		t.Errorf("with Redis down: %s = %v (want at least 1), %s = %v (want 2)", rerrors, got[rerrors], fallback, got[fallback])
	}
}
