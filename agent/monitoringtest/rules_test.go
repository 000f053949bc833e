// Package monitoringtest checks the Prometheus rules and the Grafana
// dashboard in monitoring/ with promtool and against the metrics the agent
// and nginx export. agent/e2e/prometheus_test.go runs them in a real
// Prometheus that scrapes a real fleet.
package monitoringtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/certagent/certagent/agent/internal/testenv"
)

var unitTests = filepath.Join(filepath.Dir(testenv.RulesFile()), "certagent-rules.test.yml")

// TestRulesPassPromtool: the rules load, and promtool's unit tests of them
// pass.
func TestRulesPassPromtool(t *testing.T) {
	promtool := testenv.Require(t, "promtool")
	for _, args := range [][]string{{"check", "rules", testenv.RulesFile()}, {"test", "rules", unitTests}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestEveryAlertIsTestedFiringAndQuiet: promtool's unit tests hold, for
// every alert, a time at which it fires and one at which it stays quiet,
// and no test names an alert the rules lack.
func TestEveryAlertIsTestedFiringAndQuiet(t *testing.T) {
	rules, err := testenv.LoadRules(testenv.RulesFile())
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(unitTests)
	if err != nil {
		t.Fatal(err)
	}
	var suite struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(data, &suite); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, test := range suite.Tests {
		for _, c := range test.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				fires[c.Alertname] = true
			} else {
				quiet[c.Alertname] = true
			}
		}
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts[r.Alert] = true
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("alert %s: a firing test %v, a quiet test %v; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
			for _, key := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[key]) == "" {
					t.Errorf("alert %s has no %s annotation", r.Alert, key)
				}
			}
			if !strings.Contains(r.Annotations["runbook"], "`certagent ") && !strings.Contains(r.Annotations["runbook"], "curl ") {
				t.Errorf("alert %s: its runbook names no command to look closer: %q", r.Alert, r.Annotations["runbook"])
			}
		}
	}
	for name := range fires {
		if !alerts[name] {
			t.Errorf("the unit tests name alert %s, which the rules lack", name)
		}
	}
}

// exported returns the metric names the agent (agent/telemetry) and nginx
// (lua/certagent/stats.lua) export, read from their sources, with the
// series names of the agent's histograms, and Prometheus's own up.
func exported(t *testing.T) []string {
	t.Helper()
	names := []string{"up"}
	quoted := regexp.MustCompile(`"(certagent_[a-z0-9_]+)"`)
	histogram := regexp.MustCompile(`(?s)Name:\s+"(certagent_[a-z0-9_]+)",[^}]*Buckets:`)
	files, _ := filepath.Glob(filepath.Join(testenv.RepoRoot(), "agent", "telemetry", "*.go"))
	files = append(files, filepath.Join(testenv.RepoRoot(), "lua", "certagent", "stats.lua"))
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range quoted.FindAllStringSubmatch(string(src), -1) {
			names = append(names, m[1])
		}
		for _, m := range histogram.FindAllStringSubmatch(string(src), -1) {
			names = append(names, m[1]+"_bucket", m[1]+"_count", m[1]+"_sum")
		}
	}
	if !slices.Contains(names, "certagent_nginx_fallback_total") || !slices.Contains(names, "certagent_orders_total") ||
		!slices.Contains(names, "certagent_order_duration_seconds_bucket") {
		t.Fatalf("reading the exported metric names found %v", names)
	}
	return names
}

// TestRulesAndDashboardUseExportedMetrics: every metric a rule or a panel
// selects is exported by the agent or nginx, or recorded by a rule.
func TestRulesAndDashboardUseExportedMetrics(t *testing.T) {
	rules, err := testenv.LoadRules(testenv.RulesFile())
	if err != nil {
		t.Fatal(err)
	}
	known := append(exported(t), rules.Records()...)
	check := func(where, expr string) {
		names := testenv.MetricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s selects no metric: %s", where, expr)
		}
		for _, n := range names {
			if !slices.Contains(known, n) {
				t.Errorf("%s uses %s, which nothing exports or records: %s", where, n, expr)
			}
		}
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			check("rule "+r.Alert+r.Record, r.Expr)
		}
	}
	d, err := testenv.LoadDashboard(testenv.DashboardFile())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range d.Queries() {
		if strings.Contains(q.Expr, "$") {
			t.Errorf("panel %q %s: a variable left unset: %s", q.Panel, q.RefID, q.Expr)
		}
		check("panel "+q.Panel+" "+q.RefID, q.Expr)
	}
}

// TestDashboardIsValid: the dashboard is JSON Grafana imports: a title and
// uid, panels with unique ids and a place on the grid, every query on the
// dashboard's Prometheus data source variable with a refId unique in its panel.
func TestDashboardIsValid(t *testing.T) {
	d, err := testenv.LoadDashboard(testenv.DashboardFile())
	if err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q", d.Title, d.UID)
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
		if v.Type == "query" && v.AllValue == "" {
			t.Errorf("variable %s has no allValue: All would send a list of every value", v.Name)
		}
	}
	if !slices.Contains(vars, "datasource") {
		t.Errorf("no datasource variable among %v", vars)
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.AllPanels() {
		if p.ID == 0 || ids[p.ID] {
			t.Errorf("panel %q: id %d missing or used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d %q: no title or a bad place %+v", p.ID, p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource["uid"] != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %v, %d queries", p.Title, p.Datasource, len(p.Targets))
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			queries++
			if q.RefID == "" || refs[q.RefID] || strings.TrimSpace(q.Expr) == "" || q.Datasource["uid"] != "${datasource}" {
				t.Errorf("panel %q: query %q refId missing or used twice, empty, or on data source %v", p.Title, q.RefID, q.Datasource)
			}
			refs[q.RefID] = true
		}
	}
	if queries == 0 {
		t.Error("the dashboard has no queries")
	}
}
