package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/manager"
)

// concurrencyOf parses args as `certagent run` flags and returns the bound
// on orders at once they configure.
func concurrencyOf(t *testing.T, args ...string) (*manager.Concurrency, error) {
	t.Helper()
	var conc *manager.Concurrency
	var concErr error
	cmd := runCommand()
	cmd.Action = func(c *cli.Context) error {
		conc, concErr = newConcurrency(c, slog.New(slog.NewTextHandler(io.Discard, nil)))
		return nil
	}
	app := &cli.App{Name: "certagent", Commands: []*cli.Command{cmd}}
	// A value a flag's Action refuses ends the parse.
	if err := app.Run(append([]string{"certagent", "run"}, args...)); err != nil {
		return nil, err
	}
	return conc, concErr
}

func TestWorkersFlagsBoundTheOrdersAtOnce(t *testing.T) {
	for _, c := range []struct {
		args           []string
		start, ceiling int
	}{
		{nil, 16, 32}, // adaptive by default, starting high enough for a burst
		{[]string{"--workers-min", "2", "--workers-max", "8"}, 8, 8},
		{[]string{"--workers", "6"}, 6, 6}, // fixed
		{[]string{"--workers", "0", "--workers-max", "10"}, 10, 10},
		{[]string{"--workers-min", "20"}, 20, 32},
	} {
		conc, err := concurrencyOf(t, c.args...)
		if err != nil {
			t.Errorf("%v: %v", c.args, err)
			continue
		}
		if conc.Limit() != c.start || conc.Ceiling() != c.ceiling {
			t.Errorf("%v: starts at %d up to %d, want %d up to %d", c.args, conc.Limit(), conc.Ceiling(), c.start, c.ceiling)
		}
	}
	for _, args := range [][]string{{"--workers-min", "9", "--workers-max", "8"}, {"--workers", "-1"}} {
		if _, err := concurrencyOf(t, args...); err == nil || !strings.Contains(err.Error(), "--workers") {
			t.Errorf("%v: error %v, want one naming the flag", args, err)
		}
	}
}
