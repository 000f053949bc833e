package manager

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"time"

	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/store"
)

// CheckerConfig configures a Checker.
type CheckerConfig struct {
	Store *store.Store
	// Logger receives events. Default: slog.Default().
	Logger *slog.Logger
	// Clock. Default: the system clock.
	Clock clock.Clock
	// Interval is the pause between two walks over the stored
	// certificates. Default: 10 minutes.
	Interval time.Duration
}

// Checker walks the stored certificates (the expiry index, a page at a
// time) and checks that nginx can serve each. A corrupt record is made due
// in the renewal schedule at once, so that the Renewer of whichever agent
// claims it orders its replacement under the name's lease within the
// Renewer's interval. nginx reports the corrupt records it meets on its own
// (in the stream of requested names); the Checker finds those nobody visits
// and the copies nginx has not met yet under their primary name.
type Checker struct {
	cfg CheckerConfig
}

// NewChecker returns a Checker for cfg.
func NewChecker(cfg CheckerConfig) *Checker {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Minute
	}
	return &Checker{cfg: cfg}
}

// Run walks at once and then every Interval until ctx ends. A walk that
// fails (Redis away) is logged and tried again at the next interval, so it
// returns only nil.
func (c *Checker) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if _, err := c.Pass(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Error("checking the stored certificates failed", "error", err, "retry_in", c.cfg.Interval)
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.cfg.Interval):
		}
	}
	return nil
}

// Pass walks every stored certificate once, makes each corrupt one due for
// renewal now and returns them.
func (c *Checker) Pass(ctx context.Context) ([]*store.CorruptError, error) {
	var found []*store.CorruptError
	now := c.cfg.Clock.Now()
	err := c.cfg.Store.WalkCerts(ctx, time.Unix(math.MaxInt64/2, 0), func(r store.CheckedRecord) error {
		var corrupt *store.CorruptError
		if !errors.As(r.Err, &corrupt) {
			return nil
		}
		found = append(found, corrupt)
		c.cfg.Logger.Warn("stored certificate is corrupt; its replacement is due now", "name", r.Name, "reason", corrupt.Reason)
		return c.cfg.Store.Reschedule(ctx, r.Name, now)
	})
	return found, err
}
