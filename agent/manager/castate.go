package manager

import (
	"context"
	"errors"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
)

// A CA that is down (refusing connections, not answering, answering 5xx) is
// one fact for the whole fleet, recorded in Redis by the first agent whose
// order saw it (store.CAState). Until a probe finds it answering again, no
// agent sends it orders: they go to the next CA, or, with every CA down,
// the names wait (store.WaitForCA) and go back to the requests stream the
// moment one answers. Probes are real requests paced in real time, so this
// file reads the system clock, not the Manager's Clock.

// Prober is an Issuer that can tell whether its CA answers, without an
// order. *acmeclient.Client and *acmeclient.Lazy implement it.
type Prober interface {
	Probe(ctx context.Context) error
}

// The first probe of a CA found down comes after CAProbeFirst; the pause
// doubles up to CAProbeMost, so a CA that comes back is used again within
// seconds and one that stays down sees one request every few seconds from
// the whole fleet.
const (
	CAProbeFirst = time.Second
	CAProbeMost  = 5 * time.Second
)

// caDown returns the outage of issuer's CA as the fleet recorded it, or nil
// when it is up (or Redis cannot tell: the order then finds out itself).
func (m *Manager) caDown(ctx context.Context, issuer Issuer) *acmeclient.OutageError {
	return outageOf(m.cfg.Store.CADown(ctx, issuer.DirectoryURL()))
}

// outageOf is caDown's answer from the CA's state as read.
func outageOf(state *store.CAState, err error) *acmeclient.OutageError {
	if err != nil || !watched(state) {
		return nil
	}
	return &acmeclient.OutageError{Reason: state.Reason}
}

// watched reports whether state is an outage some agent is probing: its next
// probe is not overdue by more than a probe can take. A record nobody probes
// (no agent runs WatchCAs for this CA: a `certagent issue` with another CA's
// agents) does not keep an order from trying the CA itself.
func watched(state *store.CAState) bool {
	return state != nil && time.Now().Before(state.NextProbe.Add(acmeclient.RequestTimeout+CAProbeMost))
}

// noteCA records what an order at issuer's CA showed of the CA: down after
// an outage; after any answer, up.
func (m *Manager) noteCA(ctx context.Context, issuer Issuer, err error) {
	ctx = context.WithoutCancel(ctx)
	dir := issuer.DirectoryURL()
	outage := acmeclient.AsOutage(err, dir)
	if outage == nil {
		if err == nil {
			if cerr := m.cfg.Store.ClearCADown(ctx, dir); cerr != nil {
				m.cfg.Logger.Warn("recording that the CA answers", "ca", dir, "error", cerr)
			}
		}
		return
	}
	first, merr := m.cfg.Store.MarkCADown(ctx, dir, outage.Reason, time.Now(), CAProbeFirst)
	switch {
	case merr != nil:
		m.cfg.Logger.Warn("recording that the CA is down", "ca", dir, "outage", outage.Reason, "error", merr)
	case first:
		m.cfg.Logger.Error("CA down: orders wait for it, the agents probe it", "ca", dir, "error", outage.Reason)
	}
	m.wakeCAWatch()
}

// wakeCAWatch tells WatchCAs that there is an outage to watch.
func (m *Manager) wakeCAWatch() {
	select {
	case m.caWake <- struct{}{}:
	default:
	}
}

// CAsDown returns the outage of the last CA when every configured CA is
// down, and nil when an order may be placed.
func (m *Manager) CAsDown(ctx context.Context) (*acmeclient.OutageError, error) {
	b := m.cfg.Store.NewBatch()
	down := m.queueCAsDown(ctx, b)
	b.Exec(ctx)
	return down()
}

// queueCAsDown queues the reads of CAsDown in b (every CA's state at once)
// and returns its answer, to call once b ran.
func (m *Manager) queueCAsDown(ctx context.Context, b *store.Batch) func() (*acmeclient.OutageError, error) {
	issuers := m.issuers()
	states := make([]func() (*store.CAState, error), len(issuers))
	for i, issuer := range issuers {
		states[i] = b.CADown(ctx, issuer.DirectoryURL())
	}
	return func() (*acmeclient.OutageError, error) {
		var outage *acmeclient.OutageError
		for _, read := range states {
			state, err := read()
			if err != nil {
				return nil, err
			}
			if !watched(state) {
				return nil, nil
			}
			outage = &acmeclient.OutageError{Reason: state.Reason}
			m.wakeCAWatch()
		}
		return outage, nil
	}
}

// WatchCAs probes every CA the fleet recorded as down, one agent at a time
// with a growing pause, and clears the record when the CA answers. While no
// CA is down it puts the names that waited for one back into the requests
// stream. It looks every interval while there is something to watch (a CA
// down, names waiting), at start, and when wake says an outage was seen;
// otherwise it costs nothing. It returns when ctx ends.
func (m *Manager) WatchCAs(ctx context.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	var lastErr string
	active := true // names may wait from before this agent started
	for {
		if active {
			busy, err := m.watchOnce(ctx)
			switch {
			case err != nil && ctx.Err() == nil && err.Error() != lastErr:
				// One line per kind of trouble, not one per tick.
				m.cfg.Logger.Warn("watching the CAs", "error", err)
				lastErr = err.Error()
			case err == nil:
				lastErr = ""
			}
			active = busy || err != nil
		}
		if active {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-m.caWake:
			active = true
		}
	}
}

// watchOnce probes the CAs whose probe is due and resumes the waiting names
// when a CA answers. busy says whether there is still something to watch.
func (m *Manager) watchOnce(ctx context.Context) (busy bool, err error) {
	st := m.cfg.Store
	allDown := true
	for _, issuer := range m.issuers() {
		dir := issuer.DirectoryURL()
		state, err := st.CADown(ctx, dir)
		if err != nil {
			return true, err
		}
		if state == nil {
			allDown = false
			continue
		}
		busy = true
		claimed, err := st.ClaimCAProbe(ctx, dir, time.Now(), CAProbeFirst, CAProbeMost)
		if err != nil {
			return true, err
		}
		if !claimed {
			continue
		}
		if perr := m.probe(ctx, issuer); perr != nil {
			if ctx.Err() != nil {
				return true, nil
			}
			m.cfg.Logger.Debug("CA still down", "ca", dir, "probes", state.Probes+1, "error", perr)
			if _, err := st.MarkCADown(ctx, dir, perr.Error(), time.Now(), CAProbeFirst); err != nil {
				return true, err
			}
			if err := m.remarkWaiting(ctx, perr.Error()); err != nil {
				return true, err
			}
			continue
		}
		if err := st.ClearCADown(ctx, dir); err != nil {
			return true, err
		}
		m.cfg.Logger.Info("CA answers again: resuming the names that waited for it", "ca", dir,
			"down_for", time.Now().Sub(state.Since).Round(time.Second).String())
		allDown = false
	}
	if allDown {
		return true, nil
	}
	names, err := st.ResumeWaiting(ctx)
	if err != nil {
		return true, err
	}
	if len(names) > 0 {
		// The refusals said "wait for the CA"; an agent marks each name
		// again as it takes it.
		if err := st.ClearIssuingMany(ctx, names); err != nil {
			m.cfg.Logger.Warn("clearing the marks of resumed names", "error", err)
		}
		m.cfg.Logger.Info("names that waited for the CA are queued again", "names", len(names))
	}
	return busy, nil
}

// probe asks issuer's CA whether it answers. An Issuer that cannot be
// probed counts as answering once the pause is over: its next order tells.
func (m *Manager) probe(ctx context.Context, issuer Issuer) error {
	p, ok := issuer.(Prober)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, acmeclient.RequestTimeout)
	defer cancel()
	err := p.Probe(ctx)
	var outage *acmeclient.OutageError
	if err != nil && !errors.As(err, &outage) {
		// Not an outage (a directory that does not parse, an account the CA
		// refuses): the CA answers, and the orders report what is wrong.
		m.cfg.Logger.Warn("the CA answers its probe with an error", "ca", issuer.DirectoryURL(), "error", err)
		return nil
	}
	return err
}

// remarkWaiting renews the refusal marks of the names waiting for a CA, so
// that nginx goes on serving their first handshakes at once rather than
// holding them (the marks live a minute).
func (m *Manager) remarkWaiting(ctx context.Context, reason string) error {
	names, err := m.cfg.Store.WaitingForCA(ctx, 1000)
	if err != nil || len(names) == 0 {
		return err
	}
	return m.cfg.Store.MarkRefusedMany(ctx, names, waitingReason(reason))
}

// waitingReason is the refusal nginx and operators see for a name that
// waits for the CA.
func waitingReason(outage string) string { return "deferred: " + outage }

// outage tells whether err is the CA or Redis failing rather than anything of
// the names ordered: such an error counts as no name's failure and adds no
// backoff.
func outage(err error) bool { return acmeclient.IsOutage(err) || store.Unavailable(err) }
