package manager

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/clock"
)

// ConcurrencyConfig configures a Concurrency.
type ConcurrencyConfig struct {
	// Floor and Ceiling bound the orders at once. Defaults: 4 and 32.
	Floor, Ceiling int
	// Start is the orders at once before any has ended, within Floor and
	// Ceiling. Default: 16. A burst of new names (a deployment, a fleet
	// moving its names over) is then ordered at once instead of waiting
	// for the limit to double up from the floor, round after round, while
	// first visitors wait; the budgets cap what reaches the CA either way,
	// and the first refusal halves the limit.
	Start int
	// Fixed, above zero, runs exactly this many orders at once and never
	// adapts (certagent run --workers N).
	Fixed int
	// Slow is how long an order at one CA may take before it counts as a
	// slow answer, which shrinks the limit like a refusal. Default: 30 s
	// (Let's Encrypt answers an order in a few seconds).
	Slow time.Duration
	// Calm is how long after one cut the next may come: the orders in flight
	// when the CA said "slow down" fail alike, and one such moment is one
	// cut, not one per order. Default: 5 s.
	Calm time.Duration
	// Clock. Default: the system clock.
	Clock clock.Clock
	// Logger hears of every cut. Default: slog.Default().
	Logger *slog.Logger
}

// Concurrency is the number of orders this agent runs at once, adapted to
// the CA's pace the way TCP adapts its window (AIMD): it starts at Start,
// grows by one per order that succeeds quickly (doubling each round) until
// the first cut, then by one per round; it halves, never below the floor, on
// a rateLimited answer, a CA failure (5xx, no answer) or an order slower than
// Slow. Other failures (a validation the name failed, however long it took)
// leave it as it is. The
// fleet's rate budgets (Budgets) are counted before an order gets here, so
// they still cap how many orders reach the CA.
type Concurrency struct {
	cfg ConcurrencyConfig

	mu      sync.Mutex
	limit   float64 // orders allowed at once: its integer part
	running int
	cut     bool      // a cut happened: growth is one per round from now on
	cutAt   time.Time // the last cut, for Calm
	waiting []chan struct{}
}

// NewConcurrency returns a Concurrency for cfg.
func NewConcurrency(cfg ConcurrencyConfig) *Concurrency {
	if cfg.Fixed > 0 {
		cfg.Floor, cfg.Ceiling = cfg.Fixed, cfg.Fixed
	}
	if cfg.Floor <= 0 {
		cfg.Floor = 4
	}
	if cfg.Ceiling <= 0 {
		cfg.Ceiling = 32
	}
	cfg.Ceiling = max(cfg.Ceiling, cfg.Floor)
	if cfg.Start <= 0 {
		cfg.Start = defaultStart
	}
	cfg.Start = min(max(cfg.Start, cfg.Floor), cfg.Ceiling)
	if cfg.Slow <= 0 {
		cfg.Slow = 30 * time.Second
	}
	if cfg.Calm <= 0 {
		cfg.Calm = 5 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Concurrency{cfg: cfg, limit: float64(cfg.Start)}
}

// defaultStart is ConcurrencyConfig.Start's default.
const defaultStart = 16

// Ceiling is the most orders that can ever run at once.
func (c *Concurrency) Ceiling() int { return c.cfg.Ceiling }

// Limit is how many orders may run at once now.
func (c *Concurrency) Limit() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.limit)
}

// Running is how many orders run now.
func (c *Concurrency) Running() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// Acquire waits until one more order may run, or ctx ends. The returned done
// must be called once with the order's outcome (nil: a certificate). The
// order's time counts without the time its DNS-01 answers took to publish
// (acmeclient.WithAnswerTime on ctx).
func (c *Concurrency) Acquire(ctx context.Context) (done func(error), err error) {
	for {
		c.mu.Lock()
		if c.running < int(c.limit) {
			c.running++
			c.mu.Unlock()
			started := c.cfg.Clock.Now()
			var once sync.Once
			return func(err error) {
				took := c.cfg.Clock.Now().Sub(started) - acmeclient.AnswerTime(ctx)
				once.Do(func() { c.release(err, took) })
			}, nil
		}
		wake := make(chan struct{})
		c.waiting = append(c.waiting, wake)
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			c.forget(wake)
			return nil, ctx.Err()
		}
	}
}

// shutdownKey carries, in an order's context, the context whose end is the
// agent's shutdown signal (Consumer.Run). The order's own context lives on
// through the shutdown grace, which is for the orders running at the signal.
type shutdownKey struct{}

// errNotStarted is an order that was still waiting for a free slot at the
// shutdown signal: it never reached a CA and is taken up at the next start.
var errNotStarted = errors.New("not started: the agent is shutting down")

// acquireSlot is Acquire that gives up with errNotStarted at the shutdown
// signal ctx carries, if any.
func (c *Concurrency) acquireSlot(ctx context.Context) (done func(error), err error) {
	signal, ok := ctx.Value(shutdownKey{}).(context.Context)
	if !ok {
		return c.Acquire(ctx)
	}
	if signal.Err() != nil {
		return nil, errNotStarted
	}
	waitCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(signal, func() { cancel(errNotStarted) })
	defer stop()
	done, err = c.Acquire(waitCtx)
	if err != nil && errors.Is(context.Cause(waitCtx), errNotStarted) {
		return nil, errNotStarted
	}
	return done, err
}

// forget drops a waiter that gave up; a wake it may have taken is passed on.
func (c *Concurrency) forget(wake chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, w := range c.waiting {
		if w == wake {
			c.waiting = append(c.waiting[:i], c.waiting[i+1:]...)
			return
		}
	}
	c.wakeLocked() // it was woken already: the slot goes to the next one
}

// release ends an order that took took and adapts the limit to how it went.
func (c *Concurrency) release(err error, took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running--
	switch reason := slowDownReason(err, took, c.cfg.Slow); {
	case reason != "":
		c.cutLocked(reason)
	case err == nil:
		c.growLocked()
	}
	c.wakeLocked()
}

// slowDownReason says why an order's outcome asks for fewer orders at once,
// or "" when it does not.
func slowDownReason(err error, took, slow time.Duration) string {
	switch {
	case err == nil && took > slow:
		return "slow answer"
	case err == nil, errors.Is(err, context.Canceled):
		return ""
	case acmeclient.FailedValidation(err):
		// The CA's verdict on the name: a validation is slow when the
		// name's DNS or server is, not when the CA is.
		return ""
	}
	if _, ok := acmeclient.RateLimitOf(err); ok {
		return "rateLimited"
	}
	if acmeclient.AsOutage(err, "") != nil { // 5xx, no answer
		return "CA failing"
	}
	if took > slow {
		return "slow answer"
	}
	return ""
}

func (c *Concurrency) growLocked() {
	if c.cut {
		c.limit += 1 / c.limit // one more per round of orders
	} else {
		c.limit++ // until the first cut: one more per order, doubling each round
	}
	c.limit = min(c.limit, float64(c.cfg.Ceiling))
}

func (c *Concurrency) cutLocked(reason string) {
	now := c.cfg.Clock.Now()
	if c.cut && now.Sub(c.cutAt) < c.cfg.Calm {
		return
	}
	c.cut, c.cutAt = true, now
	before := int(c.limit)
	c.limit = max(c.limit/2, float64(c.cfg.Floor))
	if int(c.limit) < before {
		c.cfg.Logger.Info("fewer orders at once", "reason", reason, "from", before, "to", int(c.limit))
	}
}

// wakeLocked wakes as many waiters as there are free slots.
func (c *Concurrency) wakeLocked() {
	for free := int(c.limit) - c.running; free > 0 && len(c.waiting) > 0; free-- {
		close(c.waiting[0])
		c.waiting = c.waiting[1:]
	}
}
