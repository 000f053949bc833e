package main

import (
	"fmt"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/certagent/certagent/agent/manager"
)

// The flags of run that bound the orders at once (manager.Concurrency).
const (
	flagWorkersMin = "workers-min"
	flagWorkersMax = "workers-max"
)

func concurrencyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: flagWorkers, EnvVars: envVars(flagWorkers), DefaultText: "adaptive", Action: atLeastInt(flagWorkers, 0),
			Usage: "orders run at once, fixed; without it (or with 0) the number adapts to the CA's pace between --" +
				flagWorkersMin + " and --" + flagWorkersMax},
		&cli.IntFlag{Name: flagWorkersMin, EnvVars: envVars(flagWorkersMin), Value: 4, Action: atLeastInt(flagWorkersMin, 0),
			Usage: "fewest orders at once while adapting: how far rateLimited, 5xx and slow answers push it down (it starts at 16, kept within the bounds)"},
		&cli.IntFlag{Name: flagWorkersMax, EnvVars: envVars(flagWorkersMax), Value: 32, Action: atLeastInt(flagWorkersMax, 0),
			Usage: "most orders at once while adapting (the fleet's rate budgets still count every order)"},
	}
}

// newConcurrency reads the bound on orders at once from run's flags; nil for
// commands without them.
func newConcurrency(c *cli.Context, log *slog.Logger) (*manager.Concurrency, error) {
	floor, ceiling := c.Int(flagWorkersMin), c.Int(flagWorkersMax)
	if ceiling == 0 {
		return nil, nil // not run: the command's own workers bound it
	}
	if floor > ceiling {
		return nil, usageErrorf("certagent: --%s %d is above --%s %d", flagWorkersMin, floor, flagWorkersMax, ceiling)
	}
	return manager.NewConcurrency(manager.ConcurrencyConfig{
		Floor: floor, Ceiling: ceiling, Fixed: c.Int(flagWorkers), Logger: log,
	}), nil
}

// workersText describes the orders at once for the start-up log line.
func workersText(c *cli.Context) string {
	if n := c.Int(flagWorkers); n > 0 {
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("adaptive, %d to %d", c.Int(flagWorkersMin), c.Int(flagWorkersMax))
}
