package manager

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/store"
)

// Repaired: a certificate was ordered and stored in place of a corrupt
// record.
const Repaired Outcome = "replaced a corrupt record"

// Repair orders a certificate for names (the first is the primary name) to
// replace the corrupt record stored under names[0], under the name's lease
// like every order, and stores it. Holding the lease, it reads the record
// again: when another agent stored a valid one since, nothing is ordered and
// that record comes back with ErrAlreadyRenewed. The CA is not told of a
// certificate it replaces: the corrupt one cannot be trusted to name it.
func (m *Manager) Repair(ctx context.Context, names []string) (*store.CertRecord, error) {
	if len(names) == 0 {
		return nil, errors.New("replacing a corrupt record: no names")
	}
	return fromPeerIsNoError(m.repair(ctx, names))
}

// repair is Repair returning errFromPeer for a peer site's certificate.
func (m *Manager) repair(ctx context.Context, names []string) (*store.CertRecord, error) {
	// What is replaced: no chain (so no ARI hint) and no fingerprint, so
	// that any valid record found under the lease counts as newer.
	return m.issueReported(ctx, "issue", names, &store.CertRecord{Names: names})
}

// repair orders the replacement of the corrupt record stored under name. It
// shares the failure memory of new names (store.Failure): a name in its
// backoff is left until its next attempt, and a failed replacement counts
// one more failure. The schedule entry moves to when the name is to be
// looked at again.
func (r *Renewer) repair(ctx context.Context, name string, corrupt *store.CorruptError) (*store.CertRecord, Outcome, error) {
	st, now := r.cfg.Manager.cfg.Store, r.cfg.Clock.Now()
	failure, err := st.GetFailure(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrCorrupt):
		failure = nil
	case err != nil:
		return nil, "", err
	case now.Before(failure.NextAttempt):
		waiting := fmt.Errorf("%w; its replacement waits until %s after %d failed attempts (last: %s)", corrupt,
			failure.NextAttempt.UTC().Format(time.RFC3339), failure.Attempts, failure.LastError)
		return nil, Deferred, errors.Join(waiting, st.Reschedule(ctx, name, failure.NextAttempt))
	}
	order := repairNames(name, corrupt)
	r.cfg.Logger.Warn("stored certificate is corrupt; ordering its replacement (the fallback is served meanwhile)",
		"name", name, "names", order, "reason", corrupt.Reason)
	var rec *store.CertRecord
	if r.cfg.Budgets == nil {
		rec, err = r.cfg.Manager.Repair(ctx, order)
	} else {
		rec, err = r.cfg.Budgets.Run(ctx, order, PriorityRenewal, func(ctx context.Context) (*store.CertRecord, error) {
			return r.cfg.Manager.repair(ctx, order)
		})
	}
	var deferred *DeferredError
	switch {
	case err == nil:
		if failure != nil {
			err = st.ClearFailure(ctx, name)
		}
		return rec, Repaired, err
	case errors.Is(err, ErrAlreadyRenewed):
		return rec, RenewedElsewhere, nil
	case errors.As(err, &deferred):
		// A rate budget is spent or the CA parked the scope: not the
		// record's failure; come back when the budget allows.
		r.cfg.Logger.Info("replacement of a corrupt record deferred by a rate budget", "name", name,
			"until", deferred.Until.Format(time.RFC3339), "reason", deferred.Reason)
		return nil, Deferred, st.Reschedule(ctx, name, deferred.Until)
	case errors.Is(err, store.ErrLockHeld):
		return nil, RenewedElsewhere, st.Reschedule(ctx, name, now.Add(r.cfg.RetryBase))
	case outage(err):
		// The CA or Redis is down, not the record: no failure and no growing
		// pause, so the record is replaced soon after they answer again.
		r.cfg.Logger.Warn("replacement of a corrupt record waits for the CA (or Redis) to answer again", "name", name,
			"error", err)
		return nil, Deferred, st.Reschedule(ctx, name, now.Add(r.cfg.RetryBase))
	case ctx.Err() != nil:
		// Cut short by shutdown: due again at once for the next agent.
		releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return nil, Failed, errors.Join(err, st.Reschedule(releaseCtx, name, now))
	}
	f, ferr := st.RecordFailure(ctx, name, err.Error(), now, func(n int) time.Duration {
		return RetryDelay(n, r.cfg.RetryBase, r.cfg.RetryMax, defaultRandom)
	})
	if ferr != nil {
		return nil, Failed, errors.Join(err, ferr)
	}
	return nil, Failed, errors.Join(fmt.Errorf("replacing the corrupt certificate for %s: %w", name, err),
		st.Reschedule(ctx, name, f.NextAttempt))
}

// repairNames is what the replacement of the corrupt record stored under
// name covers: the names the record lists when they read as names with name
// first, otherwise name alone.
func repairNames(name string, corrupt *store.CorruptError) []string {
	if corrupt.Record == nil || len(corrupt.Record.Names) == 0 || corrupt.Record.Names[0] != name {
		return []string{name}
	}
	for _, n := range corrupt.Record.Names {
		base, _ := names.CutWildcard(n)
		if normal, err := names.Normalize(base); err != nil || normal != base {
			return []string{name}
		}
	}
	return corrupt.Record.Names
}
