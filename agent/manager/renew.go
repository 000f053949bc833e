package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/backoff"
	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/store"
)

// DefaultRenewWorkers is how many renewals an agent runs at once unless told
// otherwise. A renewal is about ten requests to the CA over a few seconds
// (order, authorization, challenge, polls, finalize, download, renewal
// info), so 8 at once is some 20 to 40 requests a second: four agents behind
// one address stay well under Let's Encrypt's 250 requests a second per
// address for /acme/, while renewals, which send `replaces`, are exempt
// from its limits on new orders. The rate budgets (--limit-orders and the
// others) still count each renewal.
const DefaultRenewWorkers = 8

// RenewerConfig configures a Renewer.
type RenewerConfig struct {
	Manager *Manager
	// Logger receives events. Default: the manager's logger.
	Logger *slog.Logger
	// Clock decides what is due. Default: the manager's clock.
	Clock clock.Clock
	// Interval is the longest the scheduler sleeps between two looks at the
	// schedule; it wakes earlier when the next scheduled time is sooner, and
	// when the stream of changes tells of a certificate written (by an
	// import, a peer site, another agent). Default: 1 minute.
	Interval time.Duration
	// Batch is how many due names one read of the schedule takes. Default: 100.
	Batch int64
	// Workers is how many renewals run at once. Default: DefaultRenewWorkers.
	Workers int
	// RetryBase is the pause after a first failed renewal; it doubles with
	// each failure in a row up to RetryMax, and never exceeds a quarter of the
	// time the certificate has left (but is at least RetryBase), so retries
	// come faster as expiry nears. Defaults: 1 minute and 6 hours.
	RetryBase, RetryMax time.Duration
	// ARIMinRecheck and ARIMaxRecheck bound how soon and how late the CA's
	// renewal window is asked for again (its Retry-After, or ARIMaxRecheck
	// when it sends none). Defaults: 1 minute and 24 hours.
	ARIMinRecheck, ARIMaxRecheck time.Duration
	// Budgets, when set, keeps renewals within the fleet's rate budgets at
	// renewal priority; a renewal the budgets defer waits until then without
	// counting as a failure. Default: none, renewals are not counted.
	Budgets *Budgets
	// ClaimFor is how long a due entry this agent took stays away from the
	// other agents while it looks at it; if the agent dies meanwhile, the
	// entry is due again after it. Default: 10 minutes.
	ClaimFor time.Duration
	// ShutdownGrace is how long running renewals may finish once Shutdown is
	// called before they are cancelled (their certificates stay due).
	// Default: 20 s.
	ShutdownGrace time.Duration
}

// Renewer renews stored certificates before they expire. It reads the
// renewal schedule (a sorted set, O(log n + due) per look), chooses each
// certificate's renewal time from the CA's ARI window when the CA offers one
// and otherwise when a third of the lifetime remains (with jitter), renews
// under the per-name lease, and retries failures with a growing pause. A
// certificate whose renewal fails stays stored and served; nothing here
// deletes a certificate, expired or not.
type Renewer struct {
	cfg RenewerConfig

	// work is the context of the renewals Run starts: it outlives Run's
	// context by the shutdown grace.
	work context.Context

	inFlight claimSet
	// slots holds one token per renewal running (Workers at most), across
	// looks at the schedule: a look does not wait for the renewals of the
	// one before, so one renewal stuck on a CA that does not answer (until
	// its request's or its order's timeout) holds one worker, not the
	// schedule.
	slots chan struct{}
	// running counts the renewals started and not yet ended.
	running sync.WaitGroup
}

// NewRenewer returns a Renewer for cfg.
func NewRenewer(cfg RenewerConfig) *Renewer {
	if cfg.Logger == nil {
		cfg.Logger = cfg.Manager.cfg.Logger
	}
	if cfg.Clock == nil {
		cfg.Clock = cfg.Manager.cfg.Clock
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultRenewWorkers
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = time.Minute
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 6 * time.Hour
	}
	if cfg.ARIMinRecheck <= 0 {
		cfg.ARIMinRecheck = time.Minute
	}
	if cfg.ARIMaxRecheck <= 0 {
		cfg.ARIMaxRecheck = 24 * time.Hour
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 20 * time.Second
	}
	if cfg.ClaimFor <= 0 {
		cfg.ClaimFor = 10 * time.Minute
	}
	return &Renewer{cfg: cfg, slots: make(chan struct{}, cfg.Workers)}
}

// Run looks at the schedule until ctx ends, then lets running renewals
// finish within the shutdown grace, counted from the end of ctx, cancels
// those still running and returns.
func (r *Renewer) Run(ctx context.Context) error {
	// Renewals get their own context so that they get a grace after ctx.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	// Renewals still waiting for an order slot when ctx ends do not start.
	r.work = context.WithValue(work, shutdownKey{}, ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.loop(ctx)
		r.running.Wait()
	}()
	<-ctx.Done()
	select {
	case <-done:
	case <-time.After(r.cfg.ShutdownGrace):
		r.cfg.Logger.Warn("shutdown grace over, cancelling running renewals")
		stopWork()
		<-done
	}
	return nil
}

func (r *Renewer) loop(ctx context.Context) {
	st := r.cfg.Manager.cfg.Store
	pause := backoff.New(time.Second, r.cfg.Interval)
	filled := false
	// Followed from before the first look, so that nothing written during
	// it waits for the next Interval.
	after, _ := st.LastChangeID(ctx)
	for ctx.Err() == nil {
		if !filled {
			added, err := st.ScheduleMissing(ctx, r.cfg.Clock.Now())
			if err != nil {
				r.wait(ctx, pause.Next(), "filling the renewal schedule", err)
				continue
			}
			if added > 0 {
				r.cfg.Logger.Info("scheduled stored certificates for renewal", "count", added)
			}
			filled = true
		}
		n, err := r.dispatch(r.work)
		if err != nil {
			r.wait(ctx, pause.Next(), "reading the renewal schedule", err)
			continue
		}
		pause.Reset()
		if int64(n) == r.cfg.Batch {
			continue // more are due
		}
		sleep := r.cfg.Interval
		if len(r.slots) > 0 {
			// A renewal still running may reschedule its name sooner (a
			// failure's pause) than the schedule says now.
			sleep = min(sleep, busyLook)
		}
		if next, err := st.NextRenewals(ctx, 1); err == nil && len(next) == 1 {
			// The score is in whole seconds: wake just after it.
			if d := next[0].NotAfter.Add(time.Second).Sub(r.cfg.Clock.Now()); d < sleep {
				sleep = max(d, 100*time.Millisecond)
			}
		}
		after = r.sleep(ctx, sleep, after)
	}
}

// busyLook is the longest the loop sleeps while renewals run.
const busyLook = time.Second

func (r *Renewer) wait(ctx context.Context, d time.Duration, what string, err error) {
	if ctx.Err() != nil {
		return // shutting down: the error is the cancellation, not a failure
	}
	r.cfg.Logger.Error(what+" failed", "error", err, "retry_in", d)
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Pass looks once at every name whose scheduled time has come (at most
// Batch of them), renewing those that are due, and returns how many it
// looked at once every renewal it started has ended. It returns an error
// only when the schedule cannot be read.
func (r *Renewer) Pass(ctx context.Context) (int, error) {
	n, err := r.dispatch(ctx)
	r.running.Wait()
	return n, err
}

// dispatch starts a renewal for each name whose scheduled time has come (at
// most Batch of them) as soon as a worker is free, and returns how many it
// looked at without waiting for them to end: the loop's next look finds
// the workers still busy and the names they hold claimed (ClaimDue moves
// them ahead by ClaimFor), so it takes the next ones.
func (r *Renewer) dispatch(ctx context.Context) (int, error) {
	due, err := r.cfg.Manager.cfg.Store.RenewalDue(ctx, r.cfg.Clock.Now(), r.cfg.Batch)
	if err != nil {
		return 0, err
	}
	looked := len(due)
	for _, e := range due {
		if !r.inFlight.claim(e.Name) {
			// Still being renewed here (its renewal put it back in the
			// schedule as it ended): not counted, so that a batch of such
			// names does not read as "more are due" again and again.
			looked--
			continue
		}
		// Of the fleet's agents that read this entry, one looks at it.
		ok, err := r.cfg.Manager.cfg.Store.ClaimDue(ctx, e, r.cfg.Clock.Now().Add(r.cfg.ClaimFor))
		if !ok || err != nil {
			r.inFlight.release(e.Name)
			if err != nil {
				return 0, err
			}
			continue
		}
		r.slots <- struct{}{}
		r.running.Add(1)
		go r.renewDue(ctx, e.Name)
	}
	return looked, nil
}

// renewDue looks at one claimed due name in a worker's slot.
func (r *Renewer) renewDue(ctx context.Context, name string) {
	defer func() {
		<-r.slots
		r.inFlight.release(name)
		r.running.Done()
	}()
	if _, _, err := r.look(ctx, name, false); err != nil && ctx.Err() == nil {
		r.cfg.Logger.Error("renewal check", "name", name, "error", err)
	}
}

// Outcome says what RenewName did.
type Outcome string

const (
	// Renewed: a new certificate is stored.
	Renewed Outcome = "renewed"
	// NotDue: the certificate's renewal time has not come; nothing ordered.
	NotDue Outcome = "not due"
	// RenewedElsewhere: another agent renewed or is renewing it.
	RenewedElsewhere Outcome = "renewed by another agent"
	// Failed: the renewal was attempted and failed; the current
	// certificate stays.
	Failed Outcome = "failed"
	// Deferred: a rate budget has no room now; retried when it has.
	Deferred Outcome = "deferred"
)

// RenewName looks at the certificate stored under name now, whatever its
// scheduled time, and renews it if it is due or force is set. It returns the
// record stored afterwards. An error wrapping store.ErrNotFound means no
// certificate is stored under name.
func (r *Renewer) RenewName(ctx context.Context, name string, force bool) (*store.CertRecord, Outcome, error) {
	return r.look(ctx, name, force)
}

// look decides about one name: refresh the CA's window when it is time,
// choose the renewal time, renew when due, and record the state and the next
// time to look.
func (r *Renewer) look(ctx context.Context, name string, force bool) (*store.CertRecord, Outcome, error) {
	st := r.cfg.Manager.cfg.Store
	now := r.cfg.Clock.Now()
	rec, err := st.GetCert(ctx, name)
	var corrupt *store.CorruptError
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, "", errors.Join(err, st.Unschedule(ctx, name))
	case errors.As(err, &corrupt):
		return r.repair(ctx, name, corrupt)
	case err != nil:
		return nil, "", err
	}
	if rec.Primary() != name {
		// name is a secondary name of a certificate indexed under another
		// (an operator's NAME, or a schedule entry left from when it was
		// primary, which must not stay due forever).
		if err := st.UnscheduleSecondary(ctx, name); err != nil {
			return rec, "", err
		}
		return r.look(ctx, rec.Primary(), force)
	}
	state, err := st.GetRenewal(ctx, name)
	if err != nil {
		return rec, "", err
	}
	r.refreshWindow(ctx, rec, state, now)
	if state.RenewAt.IsZero() {
		state.RenewAt = r.lifetimeRule(rec)
	}
	if next, due := r.due(rec, state, now); !due && !force {
		return rec, NotDue, r.record(ctx, rec, state, next)
	}

	renewed, err := r.renew(ctx, rec)
	var deferred *DeferredError
	switch {
	case err == nil:
		return renewed, Renewed, nil
	case errors.Is(err, ErrAlreadyRenewed):
		return renewed, RenewedElsewhere, nil
	case errors.As(err, &deferred):
		// A rate budget is spent or the CA parked the scope: not a failure
		// of this certificate; come back when the budget allows.
		r.cfg.Logger.Info("renewal deferred by a rate budget", "name", name, "until", deferred.Until.Format(time.RFC3339), "reason", deferred.Reason)
		return rec, Deferred, r.record(ctx, rec, state, deferred.Until)
	case errors.Is(err, store.ErrLockHeld):
		// The holder stores a new certificate, which reschedules the name.
		return rec, RenewedElsewhere, r.record(ctx, rec, state, now.Add(r.cfg.RetryBase))
	case outage(err):
		// The CA or Redis is down, not this certificate: no failure counted
		// and no growing pause; tried again after the first pause, which a
		// certificate's weeks of renewal window easily allow.
		r.cfg.Logger.Warn("renewal waits for the CA (or Redis) to answer again", "name", name,
			"retry_at", now.Add(r.cfg.RetryBase).Format(time.RFC3339), "error", err)
		return rec, Deferred, r.record(ctx, rec, state, now.Add(r.cfg.RetryBase))
	case ctx.Err() != nil, errors.Is(err, errNotStarted):
		// Cut short by shutdown: not the certificate's failure. Due again
		// at once for whichever agent runs next, not after the claim.
		releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return rec, Failed, errors.Join(fmt.Errorf("renewing certificate for %s: %w", name, err),
			st.Reschedule(releaseCtx, name, now))
	}
	state.Failures++
	state.LastError = err.Error()
	state.LastFailure = now
	next := now.Add(r.retryPause(rec, state.Failures, now))
	r.complain(rec, state, next, now)
	return rec, Failed, errors.Join(fmt.Errorf("renewing certificate for %s: %w", name, err), r.record(ctx, rec, state, next))
}

// due tells whether rec is to be renewed at now: its renewal time has come
// and the pause after its last failure is over. If not, next is when to
// look again: then, or earlier when the CA's window is to be read again.
func (r *Renewer) due(rec *store.CertRecord, state *store.RenewalState, now time.Time) (next time.Time, due bool) {
	retryAt := time.Time{}
	if state.Failures > 0 {
		retryAt = state.LastFailure.Add(r.retryPause(rec, state.Failures, state.LastFailure))
	}
	if !now.Before(state.RenewAt) && !now.Before(retryAt) {
		return time.Time{}, true
	}
	next = state.RenewAt
	if retryAt.After(next) {
		next = retryAt
	}
	if !state.ARINext.IsZero() && state.ARINext.Before(next) {
		next = state.ARINext
	}
	return next, false
}

// renew orders the successor of rec, through the rate budgets when set.
func (r *Renewer) renew(ctx context.Context, rec *store.CertRecord) (*store.CertRecord, error) {
	if r.cfg.Budgets == nil {
		return r.cfg.Manager.Renew(ctx, rec)
	}
	return r.cfg.Budgets.Run(ctx, rec.Names, PriorityRenewal, func(ctx context.Context) (*store.CertRecord, error) {
		return r.cfg.Manager.issueReported(ctx, "renew", rec.Names, rec)
	})
}

func (r *Renewer) record(ctx context.Context, rec *store.CertRecord, state *store.RenewalState, next time.Time) error {
	err := r.cfg.Manager.cfg.Store.SetRenewal(ctx, rec.Primary(), rec.Fingerprint, state, next)
	if errors.Is(err, store.ErrReplaced) {
		return nil // the new certificate has its own schedule
	}
	return err
}

// refreshWindow asks the CA that issued rec for its renewal window when
// state says it is time, and picks a renewal time in a new window.
func (r *Renewer) refreshWindow(ctx context.Context, rec *store.CertRecord, state *store.RenewalState, now time.Time) {
	if !state.ARINext.IsZero() && now.Before(state.ARINext) {
		return
	}
	issuer, ok := r.cfg.Manager.IssuerFor(rec.CA).(RenewalInfoIssuer)
	if !ok {
		state.ARINext = time.Time{}
		return
	}
	w, err := issuer.RenewalInfo(ctx, []byte(rec.FullChain))
	if errors.Is(err, acmeclient.ErrNoARI) {
		state.ARINext = time.Time{}
		return
	}
	if err != nil {
		// Keep the time chosen before (or the lifetime rule) and ask again soon.
		r.cfg.Logger.Warn("asking the CA for the renewal window", "name", rec.Primary(), "error", err)
		state.ARINext = now.Add(r.cfg.ARIMinRecheck)
		return
	}
	recheck := w.RetryAfter
	if recheck <= 0 {
		recheck = r.cfg.ARIMaxRecheck
	}
	state.ARINext = now.Add(min(max(recheck, r.cfg.ARIMinRecheck), r.cfg.ARIMaxRecheck))
	if w.Start.Equal(state.WindowStart) && w.End.Equal(state.WindowEnd) && !state.RenewAt.IsZero() {
		return // same window: keep the time chosen in it
	}
	state.WindowStart, state.WindowEnd = w.Start, w.End
	state.RenewAt = pickInWindow(w.Start, w.End, rec)
	if w.ExplanationURL != "" {
		r.cfg.Logger.Info("the CA explains its renewal window", "name", rec.Primary(), "url", w.ExplanationURL)
	}
}

// pickInWindow chooses a uniformly random time in the CA's window (RFC 9773
// section 4.2), which spreads a fleet's renewals; a window in the past means
// renew now. When the window reaches into the last tenth of the lifetime (a
// CA may suggest "any time until expiry"), the pick stays out of that tenth
// if the window allows, so a failed attempt still has time to be retried.
func pickInWindow(start, end time.Time, rec *store.CertRecord) time.Time {
	if latest := rec.NotAfter.Add(-rec.NotAfter.Sub(rec.NotBefore) / 10); end.After(latest) && latest.After(start) {
		end = latest
	}
	return start.Add(time.Duration(rand.Int64N(int64(end.Sub(start)))))
}

// lifetimeRule is the renewal time without ARI: when a third of the
// lifetime remains, moved earlier by up to a thirtieth of the lifetime at
// random so that certificates issued together are not renewed together.
func (r *Renewer) lifetimeRule(rec *store.CertRecord) time.Time {
	lifetime := rec.NotAfter.Sub(rec.NotBefore)
	at := rec.NotAfter.Add(-lifetime / 3)
	if j := int64(lifetime / 30); j > 0 {
		at = at.Add(-time.Duration(rand.Int64N(j)))
	}
	return at
}

// retryPause is the wait after failures failed renewals in a row.
func (r *Renewer) retryPause(rec *store.CertRecord, failures int, at time.Time) time.Duration {
	pause := backoff.Doubling{First: r.cfg.RetryBase, Most: r.cfg.RetryMax}.After(failures)
	if left := rec.NotAfter.Sub(at); left/4 < pause {
		pause = max(left/4, r.cfg.RetryBase)
	}
	return pause
}

// complain logs a failed renewal, louder the nearer the expiry.
func (r *Renewer) complain(rec *store.CertRecord, state *store.RenewalState, next, now time.Time) {
	left := rec.NotAfter.Sub(now)
	lifetime := rec.NotAfter.Sub(rec.NotBefore)
	attrs := []any{"name", rec.Primary(), "failures", state.Failures, "expires", rec.NotAfter.Format(time.RFC3339),
		"retry_at", next.Format(time.RFC3339), "error", state.LastError}
	switch {
	case left <= 0:
		r.cfg.Logger.Error("certificate EXPIRED and its renewal keeps failing; it stays stored", attrs...)
	case left <= lifetime/6:
		r.cfg.Logger.Error("renewal failing and the certificate expires soon; the current one is still served", attrs...)
	default:
		r.cfg.Logger.Warn("renewal failed; the current certificate is still served", attrs...)
	}
}
