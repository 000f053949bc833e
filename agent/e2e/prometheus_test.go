package e2e

import (
	"context"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// TestPrometheusWatchesTheFleet runs the repository's rules and dashboard in
// a real Prometheus scraping two sites (agents and nginx) while they issue a
// certificate: every recording rule has a value; with Pebble stopped, the
// names wait and the CA alert goes pending; with one site's agent killed,
// the peer and agent alerts go pending at the other; and every dashboard
// query runs and selects only series that the scrape holds.
func TestPrometheusWatchesTheFleet(t *testing.T) {
	started := time.Now()
	f := startSites(t, []string{"a", "b"}, "a")
	var jobs [2]testenv.ScrapeJob
	jobs[0] = testenv.ScrapeJob{Name: "certagent"}
	jobs[1] = testenv.ScrapeJob{Name: "certagent-nginx", MetricsPath: "/certagent-status"}
	for _, s := range f.sites {
		listen := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
		// Let's Encrypt's limits count the orders: the budget gauge.
		s.start(t, "--http-listen", listen, "--rate-limits", "letsencrypt")
		jobs[0].Targets = append(jobs[0].Targets, listen)
		jobs[1].Targets = append(jobs[1].Targets, s.nginx.HTTPAddr)
	}
	prom := testenv.StartPrometheus(t, jobs[:]...)
	ctx := context.Background()
	a, b := f.site("a"), f.site("b")
	f.waitPeersUp(t)

	// A first handshake at site a is held until its certificate is issued.
	const name = "watched.example.test"
	if chain := a.handshake(t, name); isFallback(a.stack, chain) {
		waitUntil(t, "site a to serve "+name, func() bool { ok, _ := a.serves(t, name); return ok })
	}
	a.waitHandled(t, 10*time.Second) // so that no entry is pending when the alerts are read
	waitProm(t, "every target up", func() (bool, string) {
		targets, err := prom.Targets(ctx)
		up := 0
		var seen []string
		for _, tg := range targets {
			if tg.Health == "up" {
				up++
			}
			seen = append(seen, tg.ScrapeURL+" "+tg.Health+" "+tg.LastError)
		}
		return err == nil && up == 4, strings.Join(seen, "; ") + errText(err)
	})

	rules, err := prom.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	file, err := testenv.LoadRules(testenv.RulesFile())
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != countRules(file) {
		t.Fatalf("prometheus loaded %d rules, the file has %d", len(rules), countRules(file))
	}
	for _, record := range file.Records() {
		waitProm(t, "a value of "+record, func() (bool, string) {
			got, err := prom.Query(ctx, record)
			return err == nil && len(got) > 0, describe(got, err)
		})
	}
	for _, r := range rules {
		if r.Health == "err" {
			t.Errorf("rule %s: %s", r.Name, r.LastError)
		}
	}
	if alerts, _ := prom.Alerts(ctx); len(alerts) > 0 {
		t.Errorf("alerts of a healthy fleet: %+v", alerts)
	}

	// The CA goes away (the proxy in front of it answers 502): the next
	// name waits for it, and the alert goes pending.
	f.pebble.Stop(t)
	if chain := a.handshake(t, "during-outage.example.test"); !isFallback(a.stack, chain) {
		t.Fatal("a name requested while the CA is down was served a certificate")
	}
	waitUntil(t, "the name to wait for the CA", func() bool {
		n, err := a.store.CountWaitingForCA(ctx)
		return err == nil && n == 1
	})
	waitAlert(t, prom, "CertagentCADown", nil)

	// Site b's agent dies: site a sees its peer down, Prometheus its target.
	b.stop(t)
	waitAlert(t, prom, "CertagentPeerUnreachable", map[string]string{"peer": "b"})
	waitAlert(t, prom, "CertagentAgentDown", map[string]string{"instance": jobs[0].Targets[1]})

	d, err := testenv.LoadDashboard(testenv.DashboardFile())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range d.Queries() {
		got, err := prom.Query(ctx, q.Expr)
		if err != nil || len(got) == 0 {
			t.Errorf("panel %q %s: %s: %s", q.Panel, q.RefID, q.Expr, describe(got, err))
		}
		for _, metric := range testenv.MetricNames(q.Expr) {
			series, err := prom.Series(ctx, metric, started)
			if err != nil || len(series) == 0 {
				t.Errorf("panel %q %s uses %s, which the scrape lacks (%v)", q.Panel, q.RefID, metric, err)
			}
		}
	}
	t.Logf("the whole run took %s", time.Since(started).Round(time.Second))
}

func countRules(f *testenv.RuleFile) int {
	n := 0
	for _, g := range f.Groups {
		n += len(g.Rules)
	}
	return n
}

// waitProm waits up to 30 s for cond, and fails the test with what cond
// saw last.
func waitProm(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, seen)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitAlert waits until the alert name with labels goes pending or firing.
func waitAlert(t *testing.T, prom *testenv.Prometheus, name string, labels map[string]string) {
	t.Helper()
	waitProm(t, "alert "+name+" pending or firing", func() (bool, string) {
		alerts, err := prom.Alerts(context.Background())
		var seen []string
		for _, a := range alerts {
			seen = append(seen, a.Labels["alertname"]+" "+a.State)
			if a.Labels["alertname"] != name || (a.State != "pending" && a.State != "firing") {
				continue
			}
			match := true
			for k, v := range labels {
				match = match && a.Labels[k] == v
			}
			if match {
				return true, ""
			}
		}
		return false, strings.Join(seen, ", ") + errText(err)
	})
}

func describe(samples []testenv.Sample, err error) string {
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, s := range samples {
		v := s.Float()
		text := strconv.FormatFloat(v, 'g', 4, 64)
		if math.IsNaN(v) {
			text = "NaN"
		}
		out = append(out, labelsText(s.Metric)+" "+text)
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func labelsText(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+labels[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return "; " + err.Error()
}
