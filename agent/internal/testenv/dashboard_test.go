package testenv

import (
	"slices"
	"testing"
)

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (kind, result) (rate(certagent_orders_total{instance=~".+"}[1m]))`: {"certagent_orders_total"},
		`certagent_nginx:names_recorded:rate5m > 0 and on() certagent:requests:rate5m == 0`: {
			"certagent:requests:rate5m", "certagent_nginx:names_recorded:rate5m"},
		`sum(rate(a_total[5m])) / (sum(rate(b_total[5m])) + sum(rate(a_total[5m]))) offset 5m`: {"a_total", "b_total"},
		`label_replace(sum(rate(x[5m])), "source", "by (y)", "", "")`:                          {"x"},
		`time() - max by (peer) (last_sync{job="a,b}"})`:                                       {"last_sync"},
		`histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m]))) > 1e3`:                     {"h_bucket"},
		`absent(up{job="certagent"} == 1)`:                                                     {"up"},
	} {
		if got := MetricNames(expr); !slices.Equal(got, want) {
			t.Errorf("MetricNames(%s) = %v, want %v", expr, got, want)
		}
	}
}
