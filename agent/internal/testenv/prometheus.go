package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ScrapeJob is one scrape job of StartPrometheus.
type ScrapeJob struct {
	Name        string   // the job label, e.g. "certagent"
	MetricsPath string   // empty: /metrics
	Targets     []string // host:port
}

// Prometheus is a Prometheus server (Debian's package) on a free loopback
// port, with its storage in a temporary directory, scraping and evaluating
// the repository's rules every second.
type Prometheus struct {
	URL     string // http://127.0.0.1:port
	LogFile string
	proc    *process
}

// RulesFile is the path of the repository's Prometheus rules.
func RulesFile() string {
	return filepath.Join(RepoRoot(), "monitoring", "prometheus", "certagent-rules.yml")
}

// StartPrometheus starts Prometheus with jobs and the repository's rules, and
// waits until it is ready.
func StartPrometheus(t testing.TB, jobs ...ScrapeJob) *Prometheus {
	t.Helper()
	bin := Require(t, "prometheus")
	dir := t.TempDir()
	var conf strings.Builder
	// scrape_timeout must not exceed the interval (its default is 10 s).
	fmt.Fprintf(&conf, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n")
	fmt.Fprintf(&conf, "rule_files:\n  - %q\nscrape_configs:\n", RulesFile())
	for _, j := range jobs {
		path := j.MetricsPath
		if path == "" {
			path = "/metrics"
		}
		targets, _ := json.Marshal(j.Targets)
		fmt.Fprintf(&conf, "  - job_name: %q\n    metrics_path: %q\n    static_configs:\n      - targets: %s\n", j.Name, path, targets)
	}
	confFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confFile, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	p := &Prometheus{URL: "http://" + addr, LogFile: filepath.Join(dir, "prometheus.log")}
	var err error
	p.proc, err = startProcess(bin, p.LogFile, nil, "--config.file="+confFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.proc.stop()
		if t.Failed() {
			t.Logf("prometheus log (tail):\n%s", lastLines(p.LogFile, 30))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if p.proc.exited() {
			t.Fatalf("prometheus exited: %s", lastLines(p.LogFile, 20))
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// API calls the HTTP API at path (e.g. "/api/v1/query") with query
// parameters and decodes the answer's data into into. An error status, or
// an answer with "status" other than "success", is an error.
func (p *Prometheus) API(ctx context.Context, path string, params url.Values, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+path+"?"+params.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("asking prometheus %s: %w", path, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("decoding prometheus %s (%s): %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("prometheus %s %v: %s %s", path, params, resp.Status, body.Error)
	}
	return json.Unmarshal(body.Data, into)
}

// Sample is one element of an instant vector.
type Sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"` // [unix time, "value"]
}

// Float returns the sample's value ("NaN" included).
func (s Sample) Float() float64 {
	text, _ := s.Value[1].(string)
	v, _ := strconv.ParseFloat(text, 64)
	return v
}

// Query evaluates expr now. A query Prometheus refuses is an error; a
// result that is not an instant vector (a scalar) comes back as one sample.
func (p *Prometheus) Query(ctx context.Context, expr string) ([]Sample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.API(ctx, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		var v [2]any
		if err := json.Unmarshal(data.Result, &v); err != nil {
			return nil, fmt.Errorf("decoding the %s result of %s: %w", data.ResultType, expr, err)
		}
		return []Sample{{Value: v}}, nil
	}
	var out []Sample
	err := json.Unmarshal(data.Result, &out)
	return out, err
}

// Series returns the label sets of the series matching selector since since.
func (p *Prometheus) Series(ctx context.Context, selector string, since time.Time) ([]map[string]string, error) {
	var out []map[string]string
	err := p.API(ctx, "/api/v1/series", url.Values{"match[]": {selector}, "start": {strconv.FormatInt(since.Unix(), 10)}}, &out)
	return out, err
}

// Alert is an alert of /api/v1/alerts.
type Alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"` // pending or firing
}

// Alerts returns the pending and firing alerts.
func (p *Prometheus) Alerts(ctx context.Context) ([]Alert, error) {
	var data struct {
		Alerts []Alert `json:"alerts"`
	}
	err := p.API(ctx, "/api/v1/alerts", nil, &data)
	return data.Alerts, err
}

// Rule is a rule of /api/v1/rules.
type Rule struct {
	Name      string `json:"name"`
	Type      string `json:"type"` // recording or alerting
	Health    string `json:"health"`
	LastError string `json:"lastError"`
}

// Rules returns the loaded rules of every group.
func (p *Prometheus) Rules(ctx context.Context) ([]Rule, error) {
	var data struct {
		Groups []struct {
			Rules []Rule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.API(ctx, "/api/v1/rules", nil, &data); err != nil {
		return nil, err
	}
	var out []Rule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// Target is an active scrape target of /api/v1/targets.
type Target struct {
	ScrapeURL string `json:"scrapeUrl"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
}

// Targets returns the active scrape targets.
func (p *Prometheus) Targets(ctx context.Context) ([]Target, error) {
	var data struct {
		Active []Target `json:"activeTargets"`
	}
	err := p.API(ctx, "/api/v1/targets", nil, &data)
	return data.Active, err
}
