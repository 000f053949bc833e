package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// DashboardFile is the path of the repository's Grafana dashboard.
func DashboardFile() string {
	return filepath.Join(RepoRoot(), "monitoring", "grafana", "certagent-dashboard.json")
}

// Dashboard is the part of a Grafana dashboard JSON the tests read.
type Dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []Panel `json:"panels"`
	Templating struct {
		List []struct {
			Name     string `json:"name"`
			Type     string `json:"type"`
			AllValue string `json:"allValue"`
		} `json:"list"`
	} `json:"templating"`
}

// Panel is a dashboard panel; a row holds panels of its own when collapsed.
type Panel struct {
	ID         int               `json:"id"`
	Type       string            `json:"type"`
	Title      string            `json:"title"`
	Datasource map[string]string `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		RefID      string            `json:"refId"`
		Expr       string            `json:"expr"`
		Datasource map[string]string `json:"datasource"`
	} `json:"targets"`
	Panels []Panel `json:"panels"`
}

// DashboardQuery is one target of a panel, with the Grafana variables
// replaced so that Prometheus can run it.
type DashboardQuery struct {
	Panel string
	RefID string
	Expr  string
}

// LoadDashboard reads and decodes the dashboard at path.
func LoadDashboard(path string) (*Dashboard, error) {
	var d Dashboard
	return &d, decodeFile(path, json.Unmarshal, &d)
}

// decodeFile reads the file at path into into with unmarshal.
func decodeFile(path string, unmarshal func([]byte, any) error, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := unmarshal(data, into); err != nil {
		return fmt.Errorf("decoding %s: %w", path, err)
	}
	return nil
}

// AllPanels returns the panels, those inside rows included.
func (d *Dashboard) AllPanels() []Panel {
	var out []Panel
	var walk func([]Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// Queries returns every panel's queries with Grafana's interval variables
// set to one minute and each query variable set to its "All" value, the way
// Grafana sends them with All selected.
func (d *Dashboard) Queries() []DashboardQuery {
	pairs := []string{"$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h"}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			pairs = append(pairs, "${"+v.Name+"}", v.AllValue, "$"+v.Name, v.AllValue)
		}
	}
	vars := strings.NewReplacer(pairs...)
	var out []DashboardQuery
	for _, p := range d.AllPanels() {
		for _, t := range p.Targets {
			out = append(out, DashboardQuery{Panel: p.Title, RefID: t.RefID, Expr: vars.Replace(t.Expr)})
		}
	}
	return out
}

var (
	promqlStrings  = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promqlMatchers = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	// An identifier, not the unit of a number (5m).
	promqlIdent    = regexp.MustCompile(`(?:^|[^a-zA-Z0-9_:.])([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	promqlCall     = regexp.MustCompile(`^\s*\(`)
	promqlKeywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
		"group_left", "group_right", "inf", "nan", "Inf", "NaN"}
)

// MetricNames returns the metric names a PromQL expression selects, sorted
// and once each: the identifiers left once strings, label matchers, ranges
// and grouping labels are taken out, less function calls and keywords. It
// reads the expressions of this repository, not every PromQL there is.
func MetricNames(expr string) []string {
	expr = promqlStrings.ReplaceAllString(expr, `""`)
	expr = promqlMatchers.ReplaceAllString(expr, " ")
	expr = promqlGrouping.ReplaceAllString(expr, " ")
	var names []string
	for _, m := range promqlIdent.FindAllStringSubmatchIndex(expr, -1) {
		name := expr[m[2]:m[3]]
		if promqlCall.MatchString(expr[m[3]:]) || slices.Contains(promqlKeywords, name) {
			continue // a function or aggregation call, or a keyword
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}
