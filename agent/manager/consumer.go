package manager

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/backoff"
	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/internal/stages"
	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	Store   *store.Store
	Manager *Manager
	// Policy holds the static allow rules; used when Decider is nil.
	Policy *policy.Policy
	// Decider decides which names may get a certificate. Default: Policy,
	// the Redis allowlist and no ask URL.
	Decider *policy.Decider
	// Preflight checks DNS before an order. Default: none.
	Preflight *policy.Preflight
	// Budgets keeps orders within the CA's rate limits. Default: none (the
	// CA's own limits apply).
	Budgets *Budgets
	// RetryFirst and RetryMost bound the pause after failures of a name:
	// RetryFirst after the first, doubling up to RetryMost. Defaults: 1 min, 24 h.
	RetryFirst, RetryMost time.Duration
	// AskRetry is when a name refused because the ask URL could not answer
	// is considered again. Default: 1 min.
	AskRetry time.Duration
	// Group is the consumer group shared by all agents. Default: "certagent".
	Group string
	// Name identifies this agent in the group; it must be stable across
	// restarts so that entries this agent had taken are resumed. Required.
	Name string
	// Workers is how many names are handled at once. Default: the
	// ceiling of the Manager's Concurrency, which then decides how many of
	// them order at once (the others wait, marked as being issued); 4
	// without one.
	Workers int
	// Block is how long one read waits for new entries. Default: 2 s.
	Block time.Duration
	// ShutdownGrace is how long in-flight orders may run after shutdown
	// begins (ctx ends: the signal) before they are cancelled (and left
	// pending in the stream for the next start). Default: 20 s.
	ShutdownGrace time.Duration
	// ReclaimIdle is how long an entry may stay delivered and unacknowledged
	// before any agent takes it over: the entries of an agent that died, and
	// those left pending because another agent held the name's lease.
	// Default: 1 min.
	ReclaimIdle time.Duration
	// CAWatch is how often the agent looks at the fleet's record of the CAs
	// (Manager.WatchCAs): the delay between a CA answering its probe and
	// the names that waited for it being queued again. Default: 500 ms.
	CAWatch time.Duration
	// Clock tells when a name may be tried again. Default: the manager's.
	Clock clock.Clock
	// Logger receives events. Default: slog.Default().
	Logger *slog.Logger
}

// Consumer tails the stream of requested names and orders certificates for
// those that are allowed and have none.
type Consumer struct {
	cfg ConsumerConfig

	mu       sync.Mutex
	inFlight claimSet
	// entries holds the IDs of stream entries taken by this agent and not
	// yet handled, so reclaiming does not hand an entry out twice.
	entries claimSet
	// retryAt is when the entries this agent left pending because Redis
	// failed under them are read again (zero: none), with retries pausing
	// longer while Redis keeps failing.
	retryAt time.Time
	retries *backoff.Backoff
}

// NewConsumer returns a Consumer for cfg.
func NewConsumer(cfg ConsumerConfig) *Consumer {
	if cfg.Group == "" {
		cfg.Group = "certagent"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
		if cfg.Manager != nil && cfg.Manager.cfg.Concurrency != nil {
			cfg.Workers = cfg.Manager.cfg.Concurrency.Ceiling()
		}
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
	if cfg.Clock == nil {
		cfg.Clock = cfg.Manager.Clock()
	}
	if cfg.Decider == nil {
		cfg.Decider = policy.NewDecider(policy.DeciderConfig{Store: cfg.Store, Static: cfg.Policy})
	}
	if cfg.RetryFirst <= 0 {
		cfg.RetryFirst = time.Minute
	}
	if cfg.RetryMost <= 0 {
		cfg.RetryMost = 24 * time.Hour
	}
	if cfg.AskRetry <= 0 {
		cfg.AskRetry = time.Minute
	}
	if cfg.ReclaimIdle <= 0 {
		cfg.ReclaimIdle = time.Minute
	}
	if cfg.CAWatch <= 0 {
		cfg.CAWatch = 500 * time.Millisecond
	}
	return &Consumer{cfg: cfg,
		retries: backoff.New(500*time.Millisecond, redisRetryMost)}
}

// redisRetryMost caps the pause between two attempts while Redis fails: a
// Redis that is back is used again within seconds.
const redisRetryMost = 5 * time.Second

// Run consumes until ctx ends, then lets in-flight orders finish within the
// shutdown grace, counted from the end of ctx, and returns. Redis errors are
// retried with a growing pause. It also watches the CAs (Manager.WatchCAs).
func (c *Consumer) Run(ctx context.Context) error {
	// Orders get their own context: shutdown stops reading at once but gives
	// running orders the grace period before cancelling them.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	// Orders still waiting for a slot at the signal do not start.
	workCtx = context.WithValue(workCtx, shutdownKey{}, ctx)
	workersDone := make(chan struct{})
	go c.cancelAfterGrace(ctx, cancelWork, workersDone)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		c.cfg.Manager.WatchCAs(ctx, c.cfg.CAWatch)
	}()
	defer func() { <-watchDone }()
	jobs := make(chan store.Request)
	var workers sync.WaitGroup
	for range c.cfg.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for req := range jobs {
				c.handle(workCtx, req)
				c.entries.release(req.ID)
			}
		}()
	}

	c.read(ctx, jobs)
	close(jobs)
	workers.Wait()
	close(workersDone)
	return nil
}

// cancelAfterGrace cancels the orders still running ShutdownGrace after ctx
// ends: the grace starts with the signal, not when the last stream read
// returns. It returns early once the workers are done.
func (c *Consumer) cancelAfterGrace(ctx context.Context, cancelWork context.CancelFunc, workersDone <-chan struct{}) {
	select {
	case <-ctx.Done():
	case <-workersDone:
		return
	}
	grace := time.NewTimer(c.cfg.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-grace.C:
		c.cfg.Logger.Warn("shutdown grace over, cancelling in-flight orders", "grace", c.cfg.ShutdownGrace)
		cancelWork()
	case <-workersDone:
	}
}

// read hands entries to the workers: first those delivered to this agent
// before a restart, then new ones, and every ReclaimIdle/2 those that stayed
// pending on any consumer for ReclaimIdle (an agent killed with SIGKILL
// leaves its entries there; so does a name whose lease another agent held).
func (c *Consumer) read(ctx context.Context, jobs chan<- store.Request) {
	retry := backoff.New(500*time.Millisecond, redisRetryMost)
	groupReady := false
	// Entries delivered to this agent before a restart come first; the
	// cursor walks the pending list once, as some entries stay pending.
	pending, pendingAfter := true, "0"
	var lastReclaim time.Time
	for ctx.Err() == nil {
		if !groupReady {
			if err := c.cfg.Store.EnsureGroup(ctx, c.cfg.Group); err != nil {
				c.pause(ctx, retry, "creating the consumer group", err)
				continue
			}
			groupReady = true
		}
		if !pending && c.retryDue() {
			// Entries left pending because Redis failed under them: read
			// this agent's pending list again from the start.
			pending, pendingAfter = true, "0"
		}
		var reqs []store.Request
		var err error
		switch {
		case pending:
			reqs, err = c.cfg.Store.ReadPending(ctx, c.cfg.Group, c.cfg.Name, int64(c.cfg.Workers), pendingAfter)
		case time.Since(lastReclaim) >= c.cfg.ReclaimIdle/2:
			reqs, err = c.cfg.Store.ReclaimRequests(ctx, c.cfg.Group, c.cfg.Name, c.cfg.ReclaimIdle, int64(c.cfg.Workers)*4)
			if err == nil {
				lastReclaim = time.Now()
				c.adoptWaitingNames(ctx)
				if len(reqs) > 0 {
					c.cfg.Logger.Info("took over idle entries", "entries", len(reqs), "idle", c.cfg.ReclaimIdle)
				}
			}
		default:
			reqs, err = c.cfg.Store.ReadRequests(ctx, c.cfg.Group, c.cfg.Name, int64(c.cfg.Workers), c.cfg.Block, false)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// The group disappears when Redis restarts without persistence.
			groupReady = false
			c.pause(ctx, retry, "reading requested names", err)
			continue
		}
		retry.Reset()
		if pending {
			if len(reqs) == 0 {
				pending = false
				continue
			}
			pendingAfter = reqs[len(reqs)-1].ID
		}
		for _, req := range reqs {
			if !c.entries.claim(req.ID) {
				continue // already with a worker of this agent
			}
			select {
			case jobs <- req:
			case <-ctx.Done():
				c.entries.release(req.ID)
				return
			}
		}
	}
}

func (c *Consumer) pause(ctx context.Context, b *backoff.Backoff, what string, err error) {
	if ctx.Err() != nil {
		return // shutting down: the error is the cancellation, not a failure
	}
	wait := b.Next()
	c.cfg.Logger.Error(what+" failed", "error", err, "retry_in", wait)
	select {
	case <-ctx.Done():
	case <-time.After(wait):
	}
}

// retryDue reports whether the entries left pending for Redis trouble are
// to be read again now, and clears the appointment.
func (c *Consumer) retryDue() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.retryAt.IsZero() || time.Now().Before(c.retryAt) {
		return false
	}
	c.retryAt = time.Time{}
	return true
}

// retryLater leaves the entry being handled pending and has this agent read
// it again after a pause, growing while Redis keeps failing: the name is
// processed once Redis is back, without waiting for another agent to
// reclaim the entry or for a client to ask again.
func (c *Consumer) retryLater(log *slog.Logger, what string, err error) (ack bool) {
	c.mu.Lock()
	if c.retryAt.IsZero() {
		c.retryAt = time.Now().Add(c.retries.Next())
	}
	at := c.retryAt
	c.mu.Unlock()
	log.Warn(what+"; the entry stays pending and is taken up again", "error", err,
		"retry_at", at.Format(time.RFC3339Nano))
	return false
}

// handle decides about one entry and acknowledges it unless the work was cut
// short by shutdown or by Redis, in which case it stays pending.
func (c *Consumer) handle(ctx context.Context, req store.Request) {
	log := c.cfg.Logger.With("name", req.Name, "node", req.Node, "entry", req.ID)
	if log.Enabled(ctx, slog.LevelDebug) {
		// The steps' times, for the benchmark's timeline.
		var trace *stages.Trace
		ctx, trace = stages.With(ctx)
		defer func() {
			log.Debug("entry handled", "started", trace.Start().UTC().Format(time.RFC3339Nano), "stages", trace)
		}()
	}
	if !c.decide(ctx, log, req) {
		return
	}
	defer stages.Mark(ctx, "ack")
	if err := c.cfg.Store.Ack(ctx, c.cfg.Group, req.ID); err != nil {
		// Left pending: handled again later, which finds the work done.
		c.retryLater(log, "acknowledging the entry failed", err)
		return
	}
	c.mu.Lock()
	c.retries.Reset()
	c.mu.Unlock()
}

// decide takes one requested name through the gate and, past it, orders
// a certificate and acts on the outcome. It tells whether the entry is
// done with (acknowledged) or stays pending.
func (c *Consumer) decide(ctx context.Context, log *slog.Logger, req store.Request) (ack bool) {
	name, failure, ack, pass := c.gate(ctx, log, req)
	stages.Mark(ctx, "gate")
	if !pass {
		return ack
	}
	if !c.claim(name) {
		return true // another worker of this agent is on it
	}
	defer c.unclaim(name)
	checks, ack, pass := c.orderable(ctx, log, req, name)
	if !pass {
		return ack
	}
	var err error
	if c.cfg.Budgets != nil {
		_, err = c.cfg.Budgets.issueChecked(ctx, []string{name}, PriorityNew, checks)
	} else {
		_, err = c.cfg.Manager.Issue(ctx, []string{name})
	}
	return c.outcome(ctx, log, req, name, failure, err)
}

// gate lets a valid name through that is not in backoff and that the
// policy allows, with its failure record (nil without one). A name held
// back is marked refused, and ack tells what becomes of its entry.
func (c *Consumer) gate(ctx context.Context, log *slog.Logger, req store.Request) (name string, failure *store.Failure, ack, pass bool) {
	name, err := names.Normalize(req.Name)
	if err != nil {
		c.refuseInvalid(ctx, log, req, err)
		return "", nil, true, false
	}
	now := c.cfg.Clock.Now()
	// The failure record and what the policy decides on are read at once,
	// and decided on in turn.
	b := c.cfg.Store.NewBatch()
	readFailure := b.GetFailure(ctx, name)
	decide := c.cfg.Decider.Queue(ctx, b, name)
	b.Exec(ctx)
	// A name in backoff is left alone by every agent until its next attempt.
	failure, err = readFailure()
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrCorrupt):
	case err != nil:
		return "", nil, c.retryLater(log, "reading the failure record failed", err), false
	case now.Before(failure.NextAttempt):
		c.requested(ctx, req, name)
		log.Debug("name waits for its next attempt", "next_attempt", failure.NextAttempt.Format(time.RFC3339),
			"last_error", failure.LastError)
		c.markRefused(ctx, log, name, "waiting until "+failure.NextAttempt.UTC().Format(time.RFC3339)+": "+failure.LastError)
		return "", nil, true, false
	}
	verdict, err := decide()
	if err != nil {
		return "", nil, c.retryLater(log, "deciding about the name failed", err), false
	}
	if verdict.Unavailable {
		c.requested(ctx, req, name)
		log.Warn("name refused for now", "reason", verdict.Reason)
		c.deferName(ctx, log, name, verdict.Reason, now.Add(c.cfg.AskRetry))
		return "", nil, true, false
	}
	if !verdict.Allowed {
		c.refuse(ctx, log, req, name, store.RefusedByPolicy, verdict.Source+": "+verdict.Reason)
		return "", nil, true, false
	}
	c.requested(ctx, req, name)
	return name, failure, false, true
}

// orderable tells whether the allowed name is to be ordered now: it has
// no usable certificate, a CA is up, and the DNS pre-flight passes. It
// marks the name as being issued, for nginx to hold its first handshake.
// It returns the budgets' checks when it read them (see readBeforeOrder).
func (c *Consumer) orderable(ctx context.Context, log *slog.Logger, req store.Request, name string) (checks func() error, ack, pass bool) {
	read := c.readBeforeOrder(ctx, name)
	if err := read.marked(); err != nil {
		log.Warn("marking the name as being issued", "error", err)
	}
	stages.Mark(ctx, "mark")
	need, err := read.need()
	stages.Mark(ctx, "stored_cert")
	if err != nil {
		return nil, c.retryLater(log, "checking the stored certificate failed", err), false
	}
	if !need {
		// nginx reads the mark only when it finds no certificate: this one
		// is for a name whose certificate it has not seen yet.
		if err := c.cfg.Store.ClearIssuing(ctx, name); err != nil {
			log.Warn("clearing the issuing mark", "error", err)
		}
		return nil, true, false
	}
	ack, pass = c.orderableNow(ctx, log, req, name, read.casDown)
	return read.budgets, ack, pass
}

// beforeOrder is what the consumer reads about a name before ordering it,
// each to call once the batch ran.
type beforeOrder struct {
	marked  func() error
	need    func() (bool, error)
	casDown func() (*acmeclient.OutageError, error)
	budgets func() error // nil when not read
}

// readBeforeOrder marks name as being issued and reads what the checks
// before its order decide on, in one round trip; the checks then decide in
// their order. From here an order runs unless a check says otherwise: nginx
// may hold the name's first handshake for it. The mark goes first: nginx
// holds a handshake for an unmarked name only for a short grace; every
// check that stops the order clears the mark or turns it to refused. The
// budgets' checks are read here too unless a pre-flight check (DNS, which
// may take long) comes between them and the order.
func (c *Consumer) readBeforeOrder(ctx context.Context, name string) beforeOrder {
	b := c.cfg.Store.NewBatch()
	read := beforeOrder{
		marked:  b.MarkIssuing(ctx, name),
		need:    c.cfg.Manager.queueNeedsCertificate(ctx, b, name),
		casDown: c.cfg.Manager.queueCAsDown(ctx, b),
	}
	if c.cfg.Budgets != nil && c.cfg.Preflight == nil {
		read.budgets = c.cfg.Budgets.queueChecks(ctx, b, []string{name})
	}
	b.Exec(ctx)
	return read
}

// orderableNow is orderable's last checks, of the CAs (read as casDown)
// and the pre-flight.
func (c *Consumer) orderableNow(ctx context.Context, log *slog.Logger, req store.Request, name string,
	casDown func() (*acmeclient.OutageError, error)) (ack, pass bool) {
	// With every CA down the name waits for one, without an order.
	outage, err := casDown()
	stages.Mark(ctx, "ca_state")
	if err != nil {
		return c.retryLater(log, "reading the state of the CAs failed", err), false
	}
	if outage != nil {
		return c.waitForCA(ctx, log, req, name, outage), false
	}
	if c.cfg.Preflight == nil {
		return false, true
	}
	err = c.cfg.Preflight.Check(ctx, name)
	switch {
	case err == nil:
		return false, true
	case ctx.Err() != nil:
		return false, false
	case errors.Is(err, policy.ErrPreflightUnavailable):
		log.Warn("pre-flight check not possible now; the name waits", "error", err)
		c.deferName(ctx, log, name, err.Error(), c.cfg.Clock.Now().Add(c.cfg.AskRetry))
		return true, false
	}
	c.cfg.Manager.Emit(ctx, telemetry.Event{Type: telemetry.EventDenied, Name: name, Node: req.Node,
		Reason: "pre-flight: " + err.Error()})
	c.fail(ctx, log, name, err)
	return true, false
}

// outcome acts on the result of the order of name: clears the marks of a
// success, leaves the entry pending when the order was cut short or another
// agent has the name, waits for the CA or Redis, and otherwise records the
// failure or the deferral.
func (c *Consumer) outcome(ctx context.Context, log *slog.Logger, req store.Request, name string, failure *store.Failure, err error) (ack bool) {
	st := c.cfg.Store
	var deferred *DeferredError
	switch {
	case err == nil:
		if err := st.ClearIssued(ctx, name, failure != nil); err != nil {
			log.Warn("clearing the issuing mark", "error", err)
		}
		stages.Mark(ctx, "unmark")
	case errors.Is(err, store.ErrLockHeld) && c.cfg.Manager.releasingLease(name):
		// This agent's own lease, from an order Redis cut short: free as soon
		// as Redis takes its release, so the entry is taken up again soon.
		return c.retryLater(log, "the lease of this agent's interrupted order is not released yet", err)
	case errors.Is(err, store.ErrLockHeld):
		// Left pending: if the holder dies, its lease runs out and the
		// entry, reclaimed after ReclaimIdle, gets the name ordered.
		log.Info("another agent is ordering this name")
		return false
	case errors.Is(err, ErrInterrupted):
		// Redis went away under the order (or the lease was lost): not the
		// name's failure. Left pending, the entry is taken up again.
		return c.retryLater(log, "order interrupted", err)
	case errors.Is(err, store.ErrFenced):
		// The newer holder marks the name; its mark is not ours to clear.
		log.Warn("lease lost during the order; the newer holder's certificate stays", "error", err)
	case ctx.Err() != nil:
		log.Warn("order cut short by shutdown; left pending", "error", err)
		return false
	case errors.Is(err, errNotStarted):
		log.Info("order not started before shutdown; left pending")
		return false
	case acmeclient.IsOutage(err):
		// The CA's fault, not the name's: no failure record, no backoff.
		return c.waitForCA(ctx, log, req, name, err)
	case store.Unavailable(err):
		// Redis failed (taking the lease, counting a budget): not the
		// name's failure either.
		return c.retryLater(log, "Redis failed during the order", err)
	case errors.As(err, &deferred):
		log.Warn("order deferred", "reason", deferred.Reason, "until", deferred.Until.UTC().Format(time.RFC3339))
		c.deferName(ctx, log, name, deferred.Reason, deferred.Until)
	default:
		// The failure record holds the name back from every agent until
		// its next attempt; nginx records it again after its window.
		c.fail(ctx, log, name, err)
	}
	return true
}

// waitForCA keeps name until a CA answers again (Manager.WatchCAs puts it
// back into the stream then) and tells nginx not to hold its handshakes.
// The entry is acknowledged only once the name is kept in Redis.
func (c *Consumer) waitForCA(ctx context.Context, log *slog.Logger, req store.Request, name string, outage error) (ack bool) {
	if err := c.cfg.Store.WaitForCA(ctx, name, req.Node); err != nil {
		return c.retryLater(log, "keeping the name until the CA answers failed", err)
	}
	c.markRefused(ctx, log, name, waitingReason(outage.Error()))
	log.Info("name waits for the CA", "outage", outage.Error())
	// The watch may have seen the CA answer, resumed the names waiting then
	// and gone quiet since this order read the CA as down: it looks again.
	c.cfg.Manager.wakeCAWatch()
	return true
}

// adoptWaitingNames wakes this agent's CA watch when names wait for a CA:
// the agents that were watching may all have stopped since.
func (c *Consumer) adoptWaitingNames(ctx context.Context) {
	n, err := c.cfg.Store.CountWaitingForCA(ctx)
	if err == nil && n > 0 {
		c.cfg.Manager.wakeCAWatch()
	}
}

// fail counts one more failure of name and sets its next attempt; nginx
// stops holding handshakes for it.
func (c *Consumer) fail(ctx context.Context, log *slog.Logger, name string, cause error) {
	c.markRefused(ctx, log, name, cause.Error())
	f, err := c.cfg.Store.RecordFailure(ctx, name, cause.Error(), c.cfg.Clock.Now(), func(n int) time.Duration {
		return RetryDelay(n, c.cfg.RetryFirst, c.cfg.RetryMost, defaultRandom)
	})
	if err != nil {
		log.Error("recording the failure", "failure", cause, "error", err)
		return
	}
	log.Error("name failed", "error", cause, "attempts", f.Attempts, "next_attempt", f.NextAttempt.Format(time.RFC3339))
}

// markRefused tells nginx to stop holding handshakes for name. Best effort:
// without the mark a waiting handshake still ends at its deadline.
func (c *Consumer) markRefused(ctx context.Context, log *slog.Logger, name, reason string) {
	if err := c.cfg.Store.MarkRefused(ctx, name, reason); err != nil {
		log.Warn("marking the name as refused", "error", err)
	}
}

// deferName holds name back until until without counting a failure; nginx
// stops holding handshakes for it.
func (c *Consumer) deferName(ctx context.Context, log *slog.Logger, name, reason string, until time.Time) {
	c.markRefused(ctx, log, name, "deferred: "+reason)
	if _, err := c.cfg.Store.DeferName(ctx, name, reason, c.cfg.Clock.Now(), until); err != nil {
		log.Error("recording the deferral", "error", err)
	}
}

// claim takes name for this agent's workers; false if one has it.
func (c *Consumer) claim(name string) bool {
	return c.inFlight.claim(name)
}

func (c *Consumer) unclaim(name string) {
	c.inFlight.release(name)
}
