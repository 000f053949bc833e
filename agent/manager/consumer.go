package manager

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/store"
)

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	Store   *store.Store
	Manager *Manager
	Policy  *Policy
	// Group is the consumer group shared by all agents. Default: "certagent".
	Group string
	// Name identifies this agent in the group; it must be stable across
	// restarts so that entries this agent had taken are resumed. Required.
	Name string
	// Workers is how many orders run at once. Default: 4.
	Workers int
	// Block is how long one read waits for new entries. Default: 2 s.
	Block time.Duration
	// ShutdownGrace is how long in-flight orders may run after shutdown
	// begins before they are cancelled (and left pending in the stream for the
	// next start). Default: 20 s.
	ShutdownGrace time.Duration
	// Logger receives events. Default: slog.Default().
	Logger *slog.Logger
}

// Consumer tails the stream of requested names and orders certificates for
// those that are allowed and have none.
type Consumer struct {
	cfg ConsumerConfig

	mu       sync.Mutex
	inFlight map[string]bool
}

// NewConsumer returns a Consumer for cfg.
func NewConsumer(cfg ConsumerConfig) *Consumer {
	if cfg.Group == "" {
		cfg.Group = "certagent"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Block <= 0 {
		cfg.Block = 2 * time.Second
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 20 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Consumer{cfg: cfg, inFlight: map[string]bool{}}
}

// Run consumes until ctx ends, then lets in-flight orders finish within the
// shutdown grace and returns. Redis errors are retried with a growing pause.
func (c *Consumer) Run(ctx context.Context) error {
	// Orders get their own context: shutdown stops reading at once but gives
	// running orders the grace period before cancelling them.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	jobs := make(chan store.Request)
	var workers sync.WaitGroup
	for range c.cfg.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for req := range jobs {
				c.handle(workCtx, req)
			}
		}()
	}

	c.read(ctx, jobs)
	close(jobs)

	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.cfg.ShutdownGrace):
		c.cfg.Logger.Warn("shutdown grace over, cancelling in-flight orders")
		cancelWork()
		<-done
	}
	return nil
}

func (c *Consumer) read(ctx context.Context, jobs chan<- store.Request) {
	backoff := newBackoff(500*time.Millisecond, 30*time.Second)
	groupReady := false
	// Entries delivered to this agent before a restart come first.
	pending := true
	for ctx.Err() == nil {
		if !groupReady {
			if err := c.cfg.Store.EnsureGroup(ctx, c.cfg.Group); err != nil {
				c.pause(ctx, backoff, "creating the consumer group", err)
				continue
			}
			groupReady = true
		}
		reqs, err := c.cfg.Store.ReadRequests(ctx, c.cfg.Group, c.cfg.Name, int64(c.cfg.Workers), c.cfg.Block, pending)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// The group disappears when Redis restarts without persistence.
			groupReady = false
			c.pause(ctx, backoff, "reading requested names", err)
			continue
		}
		backoff.reset()
		if pending && len(reqs) == 0 {
			pending = false
			continue
		}
		for _, req := range reqs {
			select {
			case jobs <- req:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (c *Consumer) pause(ctx context.Context, b *backoff, what string, err error) {
	wait := b.next()
	c.cfg.Logger.Error(what+" failed", "error", err, "retry_in", wait)
	select {
	case <-ctx.Done():
	case <-time.After(wait):
	}
}

// handle decides about one entry and acknowledges it unless the work was cut
// short by shutdown, in which case it stays pending for the next start.
func (c *Consumer) handle(ctx context.Context, req store.Request) {
	log := c.cfg.Logger.With("name", req.Name, "node", req.Node, "entry", req.ID)
	if c.decide(ctx, log, req) {
		if err := c.cfg.Store.Ack(ctx, c.cfg.Group, req.ID); err != nil {
			log.Error("acknowledging entry", "error", err)
		}
	}
}

func (c *Consumer) decide(ctx context.Context, log *slog.Logger, req store.Request) (ack bool) {
	name, err := names.Normalize(req.Name)
	if err != nil {
		log.Warn("ignoring invalid name", "error", err)
		return true
	}
	if !c.cfg.Policy.Allows(name) {
		log.Info("name not allowed by policy")
		return true
	}
	if !c.claim(name) {
		return true // another worker of this agent is on it
	}
	defer c.unclaim(name)
	need, err := c.cfg.Manager.NeedsCertificate(ctx, name)
	if err != nil {
		log.Error("checking the stored certificate", "error", err)
		return ctx.Err() == nil
	}
	if !need {
		return true
	}
	if _, err := c.cfg.Manager.Issue(ctx, []string{name}); err != nil {
		if errors.Is(err, store.ErrLockHeld) {
			log.Info("another agent is ordering this name")
			return true
		}
		if ctx.Err() != nil {
			log.Warn("order cut short by shutdown; left pending", "error", err)
			return false
		}
		// nginx records the name again on a later handshake once its
		// request window has passed.
		log.Error("issuing certificate", "error", err)
	}
	return true
}

func (c *Consumer) claim(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inFlight[name] {
		return false
	}
	c.inFlight[name] = true
	return true
}

func (c *Consumer) unclaim(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.inFlight, name)
}

// backoff doubles a pause from min up to max.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }
