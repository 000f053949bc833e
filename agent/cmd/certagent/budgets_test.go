package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/manager"
)

// budgetConfigOf parses args as `certagent run` flags and returns the
// budgets they configure.
func budgetConfigOf(t *testing.T, args ...string) (manager.BudgetConfig, error) {
	t.Helper()
	var cfg manager.BudgetConfig
	var cfgErr error
	cmd := runCommand()
	cmd.Action = func(c *cli.Context) error {
		cfg, cfgErr = budgetConfig(c)
		return nil
	}
	app := &cli.App{Name: "certagent", Commands: []*cli.Command{cmd}}
	// A value a flag's Action refuses ends the parse.
	if err := app.Run(append([]string{"certagent", "run"}, args...)); err != nil {
		return cfg, err
	}
	return cfg, cfgErr
}

func TestBudgetsFollowTheCA(t *testing.T) {
	for _, c := range []struct {
		args                  []string
		orders, certs, failed int
	}{
		// Let's Encrypt's limits at its directories, by preset or URL.
		{[]string{"--acme-directory", "letsencrypt"}, 300, 50, 5},
		{[]string{"--acme-directory", "https://acme-staging-v02.api.letsencrypt.org/directory"}, 300, 50, 5},
		// None elsewhere, unless configured.
		{[]string{"--acme-directory", "https://127.0.0.1:14000/dir"}, 0, 0, 0},
		{[]string{"--acme-directory", "https://127.0.0.1:14000/dir", "--limit-certs", "500"}, 0, 500, 0},
		{[]string{"--acme-directory", "https://127.0.0.1:14000/dir", "--rate-limits", "letsencrypt"}, 300, 50, 5},
		{[]string{"--acme-directory", "https://127.0.0.1:14000/dir", "--rate-limits", "letsencrypt", "--limit-certs", "80"}, 300, 80, 5},
		{[]string{"--acme-directory", "letsencrypt", "--rate-limits", "none"}, 0, 0, 0},
		{[]string{"--acme-directory", "letsencrypt", "--limit-orders", "100"}, 100, 50, 5},
	} {
		cfg, err := budgetConfigOf(t, c.args...)
		if err != nil {
			t.Errorf("%v: %v", c.args, err)
			continue
		}
		if cfg.OrdersPerAccount != c.orders || cfg.CertsPerDomain != c.certs || cfg.FailedPerName != c.failed {
			t.Errorf("%v: orders %d, certs %d, failed %d; want %d, %d, %d", c.args,
				cfg.OrdersPerAccount, cfg.CertsPerDomain, cfg.FailedPerName, c.orders, c.certs, c.failed)
		}
		if cfg.OrderHold <= 0 {
			t.Errorf("%v: no order hold", c.args)
		}
	}
	for _, args := range [][]string{{"--rate-limits", "pebble"}, {"--limit-certs", "-1"}} {
		if _, err := budgetConfigOf(t, args...); err == nil || !strings.Contains(err.Error(), "--") {
			t.Errorf("%v: %v, want a usage error naming the flag", args, err)
		}
	}
}
