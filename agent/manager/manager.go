// Package manager decides which certificates to order and orders them: one
// order per name at a time across the fleet, the result written where nginx
// reads it.
package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/internal/stages"
	"github.com/certagent/certagent/agent/names"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// Issuer obtains certificates from a CA. *acmeclient.Client implements it.
type Issuer interface {
	// Obtain orders one certificate for names, the first being the subject.
	Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error)
	// DirectoryURL names the CA.
	DirectoryURL() string
}

// OptionsIssuer is an Issuer that takes per-order options (the certificate
// an order replaces, a profile). *acmeclient.Client implements it.
type OptionsIssuer interface {
	ObtainWith(ctx context.Context, names []string, opts acmeclient.OrderOptions) (*acmeclient.Certificate, error)
}

// RenewalInfoIssuer is an Issuer that can tell the CA's suggested renewal
// window (ARI, RFC 9773). *acmeclient.Client implements it.
type RenewalInfoIssuer interface {
	RenewalInfo(ctx context.Context, chainPEM []byte) (*acmeclient.RenewalWindow, error)
}

// Revoker is an Issuer that can revoke what it issued. *acmeclient.Client
// implements it.
type Revoker interface {
	Revoke(ctx context.Context, chainPEM []byte, reason uint) error
}

// CertKeyRevoker is a Revoker that can also sign a revocation with the
// certificate's own key (RFC 8555, section 7.6): the way to revoke a
// certificate another site's account ordered. *acmeclient.Lazy is one.
type CertKeyRevoker interface {
	RevokeWithCertKey(ctx context.Context, chainPEM, keyPEM []byte, reason uint) error
}

// Config configures a Manager.
type Config struct {
	Store  *store.Store
	Issuer Issuer
	// Fallbacks are further CAs tried in turn, for the same order, when
	// Issuer (and the fallbacks before) fail. Default: none.
	Fallbacks []Issuer
	// Logger receives events. Default: slog.Default().
	Logger *slog.Logger
	// Clock. Default: the system clock.
	Clock clock.Clock
	// OrderTimeout bounds one order at one CA. Default: 2 minutes.
	OrderTimeout time.Duration
	// LockTTL is the lease on a name while its order runs. Default: store.LockTTL.
	LockTTL time.Duration
	// Events receives an event for every order's outcome. Default: a hub
	// that only logs them to Logger.
	Events *telemetry.Hub
	// Peers are the other sites of the fleet (docs/peers.md): a certificate
	// one of them holds is taken instead of ordering, and an order runs only
	// under a lease a quorum of sites granted. Default: none, one site.
	Peers Peers
	// Concurrency bounds the orders running at once at the CAs, adapting
	// to their pace (concurrency.go). Default: no bound beyond the callers'.
	Concurrency *Concurrency
}

// Peers is what ordering needs of the fleet's other sites.
type Peers interface {
	// Existing stores here and returns a certificate a peer holds for names
	// that is not due for renewal and newer than have (nil when nothing is
	// held here). It returns nil, nil when no reachable peer has one.
	Existing(ctx context.Context, names []string, have *store.CertRecord) (*store.CertRecord, error)
	// Lease takes the lease on name at enough sites that no other site can
	// order it at the same time, or returns an error saying why not; the
	// error wraps store.ErrLockHeld when another site holds the name (and
	// orders it), not when too few sites answered.
	Lease(ctx context.Context, name string) (PeerLease, error)
}

// PeerLease is a lease on a name held at a quorum of sites.
type PeerLease interface {
	// KeepAlive extends the lease until ctx ends and calls lost once when
	// it can no longer be kept.
	KeepAlive(ctx context.Context, lost func(error))
	// Release gives the lease up at every site that granted it.
	Release(ctx context.Context) error
}

// Manager orders certificates and stores them.
type Manager struct {
	cfg Config
	// caWake wakes WatchCAs when an order sees a CA down (castate.go).
	caWake chan struct{}
	// releasing holds the names whose lease this agent gave up while Redis
	// could not take the release (store.Lock.ReleaseSoon retries it).
	releasing sync.Map
}

// New returns a Manager for cfg.
func New(cfg Config) *Manager {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.OrderTimeout <= 0 {
		cfg.OrderTimeout = 2 * time.Minute
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = store.LockTTL
	}
	if cfg.Events == nil {
		cfg.Events = telemetry.NewHub(cfg.Logger)
	}
	return &Manager{cfg: cfg, caWake: make(chan struct{}, 1)}
}

// Issue orders one certificate for names (normalized; the first is the
// primary name), under the lease of the primary name, and stores it. It
// returns an error wrapping store.ErrLockHeld when another agent is ordering it.
func (m *Manager) Issue(ctx context.Context, names []string) (*store.CertRecord, error) {
	return fromPeerIsNoError(m.issueReported(ctx, "issue", names, nil))
}

// issueReported runs issue and reports its outcome as an event of kind. A
// certificate taken from a peer site comes back with errFromPeer, which
// Budgets reads (no certificate was issued by the CA).
func (m *Manager) issueReported(ctx context.Context, kind string, names []string, renewing *store.CertRecord) (*store.CertRecord, error) {
	started := m.cfg.Clock.Now()
	rec, err := m.issue(ctx, names, renewing)
	m.report(ctx, kind, names, rec, err, started)
	return rec, err
}

// errFromPeer tells report and Budgets that issue stored a peer site's
// certificate instead of ordering one; Issue, Renew and Repair return no
// error for it.
var errFromPeer = errors.New("certificate taken from a peer site")

// fromPeerIsNoError drops errFromPeer, for the exported entry points.
func fromPeerIsNoError(rec *store.CertRecord, err error) (*store.CertRecord, error) {
	if errors.Is(err, errFromPeer) {
		err = nil
	}
	return rec, err
}

// noOrderError is an order that failed before a CA created one: no new
// order was placed (or one recorded by an agent before was resumed), so
// Budgets may give the new-orders slot back when no CA answered. It holds
// the error of each CA tried and reads as their errors.Join.
type noOrderError struct{ errs []error }

func (e noOrderError) Error() string   { return errors.Join(e.errs...).Error() }
func (e noOrderError) Unwrap() []error { return e.errs }

// issuedError is an order that ends without a stored certificate although
// the CA issued one (the fenced write refused it, Redis failed under it, the
// lease was lost at the end): the CA counted that certificate against its
// limits, so Budgets keeps its slot. It reads as the error it holds.
type issuedError struct{ err error }

func (e issuedError) Error() string { return e.err.Error() }
func (e issuedError) Unwrap() error { return e.err }

// ErrInterrupted marks an order cut short by the agent's side, not by the CA
// or the name: the name's lease could not be kept, or the certificate could
// not be written to Redis. The name deserves another try soon rather than a
// failure record.
var ErrInterrupted = errors.New("order interrupted")

// ErrAlreadyRenewed is returned by Renew when, by the time it held the lease,
// the stored certificate was no longer the one it was asked to renew: another
// agent renewed it.
var ErrAlreadyRenewed = errors.New("already renewed by another agent")

// Renew orders a successor of rec (same names) under the lease of its primary
// name and stores it. The CA that issued rec is told which certificate the
// order replaces (ARI). Until the new certificate is stored, rec stays served.
func (m *Manager) Renew(ctx context.Context, rec *store.CertRecord) (*store.CertRecord, error) {
	if len(rec.Names) == 0 {
		return nil, errors.New("renewing: the record has no names")
	}
	return fromPeerIsNoError(m.issueReported(ctx, "renew", rec.Names, rec))
}

// report turns the outcome of an order into an event. A lease held elsewhere
// and a renewal another agent already did are not failures; neither is an
// order cut short by shutdown, which is taken up again, nor one that waits
// for its CA (or Redis) to answer again (deferred, as its name's failure
// record and renewal schedule have it).
func (m *Manager) report(ctx context.Context, kind string, names []string, rec *store.CertRecord, err error, started time.Time) {
	e := telemetry.Event{Kind: kind, Name: names[0], Names: names}
	switch {
	case err == nil:
		e.Type = telemetry.EventIssued
		if kind == "renew" {
			e.Type = telemetry.EventRenewed
		}
		e.Names, e.NotAfter, e.Fingerprint = rec.Names, rec.NotAfter, rec.Fingerprint
		e.Took = m.cfg.Clock.Now().Sub(started).Seconds()
	case errors.Is(err, errFromPeer):
		e.Type = telemetry.EventFromPeer
		e.Names, e.NotAfter, e.Fingerprint = rec.Names, rec.NotAfter, rec.Fingerprint
	case errors.Is(err, store.ErrLockHeld):
		e.Type = telemetry.EventBusy
	case errors.Is(err, ErrAlreadyRenewed), errors.Is(err, errNotStarted), ctx.Err() != nil:
		return
	case outage(err):
		e.Type, e.Error = telemetry.EventDeferred, err.Error()
	default:
		e.Type, e.Error = telemetry.EventFailed, err.Error()
	}
	m.cfg.Events.Emit(ctx, e)
}

// Clock is the manager's clock, which the components working with it
// share.
func (m *Manager) Clock() clock.Clock { return m.cfg.Clock }

// Emit reports e through the manager's events.
func (m *Manager) Emit(ctx context.Context, e telemetry.Event) { m.cfg.Events.Emit(ctx, e) }

func (m *Manager) issue(ctx context.Context, names []string, renewing *store.CertRecord) (*store.CertRecord, error) {
	if len(names) == 0 {
		return nil, errors.New("issuing: no names")
	}
	primary := names[0]
	l, err := m.lease(ctx, primary)
	stages.Mark(ctx, "lease")
	if err != nil {
		return nil, err
	}
	defer l.release(ctx)

	var replaces string
	if renewing != nil {
		current, id, err := m.stillToRenew(l.ctx, primary, renewing)
		if err != nil {
			return current, err
		}
		replaces = id
	}
	if m.cfg.Peers != nil {
		// The first CA's state and the running order were read with the
		// lease, before the peer sites, which may take a while.
		l.firstCA = nil
		l.lock.RereadOrder()
		rec, release, err := m.fromPeers(l.ctx, names, renewing, l.stop)
		if rec != nil {
			return rec, errFromPeer
		}
		if err != nil {
			return nil, err
		}
		defer release()
	}
	cert, issuer, err := m.orderFromCAs(l, names, renewing, replaces)
	if err != nil {
		return nil, err
	}
	rec, err := m.storeIssued(ctx, l, primary, cert, issuer)
	if err != nil {
		return nil, err
	}
	switch {
	case cert.Replaces != "":
		m.cfg.Logger.Debug("the CA was told which certificate this one replaces", "name", primary, "replaces", cert.Replaces)
	case replaces != "" && issuer.DirectoryURL() == renewing.CA:
		m.cfg.Logger.Info("renewed without the ARI hint: the CA has no ARI or refused it", "name", primary, "replaces", replaces)
	}
	return rec, nil
}

// heldLease is the lease on a name while its order runs: ctx ends (with
// ErrInterrupted as its cause) when the lease cannot be kept.
type heldLease struct {
	m    *Manager
	name string
	lock *store.Lock
	ctx  context.Context
	stop context.CancelCauseFunc
	// firstCA is the state of the first CA as read with the lease; nil once
	// used, or when the peer sites were asked since (that takes a while).
	firstCA func() (*store.CAState, error)
}

// caDown is Manager.caDown for the i-th CA of the lease's order, answered
// for the first from the state read with the lease.
func (l *heldLease) caDown(i int, issuer Issuer) *acmeclient.OutageError {
	if read := l.firstCA; i == 0 && read != nil {
		l.firstCA = nil
		return outageOf(read())
	}
	return l.m.caDown(l.ctx, issuer)
}

// lease takes the lease on name and keeps extending it until release. The
// state of the first CA, which the order looks at next, is read in the same
// round trip (and so is the name's running order: store.Batch.AcquireLock).
func (m *Manager) lease(ctx context.Context, name string) (*heldLease, error) {
	b := m.cfg.Store.NewBatch()
	acquired := b.AcquireLock(ctx, name, m.cfg.LockTTL)
	firstCA := b.CADown(ctx, m.cfg.Issuer.DirectoryURL())
	b.Exec(ctx)
	lock, err := acquired()
	if err != nil {
		return nil, err
	}
	keepCtx, stopKeeping := context.WithCancelCause(ctx)
	go lock.KeepAlive(keepCtx, func(err error) {
		stopKeeping(fmt.Errorf("%w: the lease on %s could not be kept: %w", ErrInterrupted, name, err))
	})
	return &heldLease{m: m, name: name, lock: lock, ctx: keepCtx, stop: stopKeeping, firstCA: firstCA}, nil
}

// release stops extending the lease first (an extension after the release
// would report the lease lost), then releases it, even when ctx is over.
func (l *heldLease) release(ctx context.Context) {
	l.stop(nil)
	releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	l.m.releasing.Store(l.name, struct{}{})
	if err := l.lock.ReleaseSoon(releaseCtx, func() { l.m.releasing.Delete(l.name) }); err != nil {
		l.m.cfg.Logger.Warn("releasing lock (retried in the background while Redis cannot take it)", "name", l.name,
			"error", err)
	}
}

// stillToRenew checks, under the lease, that no other agent renewed the
// certificate since it was read (ErrAlreadyRenewed with the current one),
// and returns the ARI id of the one being replaced: empty for a
// certificate without one (imported from a CA without AKI), ordered anew.
func (m *Manager) stillToRenew(ctx context.Context, primary string, renewing *store.CertRecord) (*store.CertRecord, string, error) {
	current, err := m.cfg.Store.GetCert(ctx, primary)
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrCorrupt) {
		return nil, "", fmt.Errorf("renewing certificate for %s: %w", primary, err)
	}
	if err == nil && current.Fingerprint != renewing.Fingerprint {
		return current, "", fmt.Errorf("renewing certificate for %s: %w", primary, ErrAlreadyRenewed)
	}
	replaces, _ := acmeclient.CertID([]byte(renewing.FullChain))
	return nil, replaces, nil
}

// orderFromCAs asks each CA in turn, skipping those the fleet knows to be
// down, until one issues. Its error is a noOrderError when no CA created
// an order.
func (m *Manager) orderFromCAs(l *heldLease, names []string, renewing *store.CertRecord, replaces string) (*acmeclient.Certificate, Issuer, error) {
	primary := names[0]
	var errs []error
	var recorded bool // an order was created at a CA (and recorded with the lease)
	for i, candidate := range m.issuers() {
		// A CA the fleet knows to be down is not asked (castate.go).
		if outage := l.caDown(i, candidate); outage != nil {
			errs = append(errs, outage)
			continue
		}
		opts := acmeclient.OrderOptions{Journal: leaseJournal{lock: l.lock, log: m.cfg.Logger, name: primary, recorded: &recorded}}
		if renewing != nil && renewing.CA == candidate.DirectoryURL() {
			opts.Replaces = replaces
		}
		if _, journaled := candidate.(OptionsIssuer); !journaled {
			recorded = true // it keeps no journal: whether it created an order is unknown
		}
		cert, err := m.obtain(l.ctx, candidate, names, opts)
		m.noteCA(l.ctx, candidate, err)
		if err == nil {
			return cert, candidate, nil
		}
		errs = append(errs, err)
		if context.Cause(l.ctx) != nil {
			break
		}
		if len(errs) < len(m.issuers()) {
			m.cfg.Logger.Warn("CA failed, trying the next one", "name", primary, "ca", candidate.DirectoryURL(), "error", err)
		}
	}
	if cause := context.Cause(l.ctx); errors.Is(cause, ErrInterrupted) {
		errs = append(errs, cause)
	}
	if !recorded {
		return nil, nil, noOrderError{errs}
	}
	return nil, nil, errors.Join(errs...)
}

// storeIssued stores what issuer issued, fenced by the lease: if the lease
// was lost and another agent took the name since, its newer result stays
// and this one is dropped (store.ErrFenced). Every error is an issuedError:
// the CA has issued a certificate.
func (m *Manager) storeIssued(ctx context.Context, l *heldLease, primary string, cert *acmeclient.Certificate, issuer Issuer) (*store.CertRecord, error) {
	if cause := context.Cause(l.ctx); cause != nil {
		return nil, issuedError{fmt.Errorf("obtaining certificate for %s: %w", primary, cause)}
	}
	rec, err := store.NewCertRecord(cert.FullChain, cert.KeyPEM, primary)
	if err != nil {
		return nil, issuedError{fmt.Errorf("obtaining certificate for %s: the CA returned an unusable certificate: %w", primary, err)}
	}
	rec.KeyType = cert.KeyType
	rec.CA = issuer.DirectoryURL()
	rec.CertURL = cert.CertURL
	rec.IssuedAt = m.cfg.Clock.Now()
	err = l.lock.PutCert(ctx, rec)
	stages.Mark(ctx, "cert_write")
	if err != nil {
		if !errors.Is(err, store.ErrFenced) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		return nil, issuedError{err}
	}
	return rec, nil
}

// fromPeers takes the fleet-wide lease on the name, kept alive until ctx
// ends, then asks the other sites for a certificate they already hold: taken
// under the lease, the answer cannot miss one another site stored just before
// releasing its own lease. It returns that certificate (the lease released),
// or the release of the lease for the order to run under. An error wraps
// store.ErrLockHeld when the lease is held elsewhere: like a local lease, the
// name is looked at again later.
func (m *Manager) fromPeers(ctx context.Context, names []string, renewing *store.CertRecord,
	interrupt context.CancelCauseFunc) (*store.CertRecord, func(), error) {
	primary := names[0]
	lease, err := m.cfg.Peers.Lease(ctx, primary)
	if err != nil {
		if !errors.Is(err, store.ErrLockHeld) {
			// No site holds the name (too few answered): no order runs for
			// it anywhere, so nginx does not hold its first handshakes.
			if err := m.cfg.Store.MarkRefused(ctx, primary, "too few sites answer to lease it; tried again later"); err != nil {
				m.cfg.Logger.Warn("marking the name as not being issued", "name", primary, "error", err)
			}
		}
		return nil, nil, fmt.Errorf("locking %s across sites: %w: %w", primary, store.ErrLockHeld, err)
	}
	leaseCtx, stop := context.WithCancel(ctx)
	go lease.KeepAlive(leaseCtx, func(err error) {
		interrupt(fmt.Errorf("%w: the lease on %s across sites could not be kept: %w", ErrInterrupted, primary, err))
	})
	release := func() {
		stop()
		releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lease.Release(releaseCtx); err != nil {
			m.cfg.Logger.Warn("releasing the lease across sites", "name", primary, "error", err)
		}
	}
	rec, err := m.cfg.Peers.Existing(leaseCtx, names, renewing)
	if err != nil {
		// Unreachable peers must not stop issuance: the lease keeps two
		// sites from ordering at once.
		m.cfg.Logger.Warn("asking the peer sites for an existing certificate", "name", primary, "error", err)
	}
	if rec != nil {
		release()
		m.cfg.Logger.Info("certificate taken from a peer site, no order placed", "name", primary,
			"fingerprint", rec.Fingerprint, "not_after", rec.NotAfter.UTC().Format(time.RFC3339))
		return rec, nil, nil
	}
	return nil, release, nil
}

// obtain runs one order against one CA within the order timeout.
func (m *Manager) obtain(ctx context.Context, issuer Issuer, names []string, opts acmeclient.OrderOptions) (cert *acmeclient.Certificate, err error) {
	if m.cfg.Concurrency != nil {
		ctx = acmeclient.WithAnswerTime(ctx)
		done, waitErr := m.cfg.Concurrency.acquireSlot(ctx)
		stages.Mark(ctx, "slot")
		if waitErr != nil {
			return nil, fmt.Errorf("waiting for a free order slot for %s: %w", names[0], waitErr)
		}
		defer func() { done(err) }() // the order's outcome adapts the limit
	}
	orderCtx, cancel := context.WithTimeoutCause(ctx, m.cfg.OrderTimeout,
		fmt.Errorf("the order took longer than %s", m.cfg.OrderTimeout))
	defer cancel()
	if oi, ok := issuer.(OptionsIssuer); ok {
		return oi.ObtainWith(orderCtx, names, opts)
	}
	return issuer.Obtain(orderCtx, names)
}

// issuers returns the CAs in the order they are tried.
func (m *Manager) issuers() []Issuer {
	return append([]Issuer{m.cfg.Issuer}, m.cfg.Fallbacks...)
}

// IssuerFor returns the configured CA whose directory URL is ca, or nil.
func (m *Manager) IssuerFor(ca string) Issuer {
	for _, issuer := range m.issuers() {
		if issuer.DirectoryURL() == ca {
			return issuer
		}
	}
	return nil
}

// Store returns the store the manager writes to.
func (m *Manager) Store() *store.Store { return m.cfg.Store }

// NeedsCertificate reports whether name has no usable certificate: none
// stored for it or for its wildcard, or the stored one is in the last third
// of its lifetime, or the record nginx would serve for it is corrupt (nginx
// serves the fallback for it and prefers the exact record to the wildcard).
func (m *Manager) NeedsCertificate(ctx context.Context, name string) (bool, error) {
	b := m.cfg.Store.NewBatch()
	need := m.queueNeedsCertificate(ctx, b, name)
	b.Exec(ctx)
	return need()
}

// queueNeedsCertificate queues the reads of NeedsCertificate in b (both
// records at once) and returns its answer, to call once b ran.
func (m *Manager) queueNeedsCertificate(ctx context.Context, b *store.Batch, name string) func() (bool, error) {
	candidates := []string{name}
	if parent, ok := names.WildcardParent(name); ok {
		candidates = append(candidates, "*."+parent)
	}
	read := b.GetCerts(ctx, candidates)
	return func() (bool, error) {
		recs, errs, err := read()
		if err != nil {
			return false, err
		}
		now := m.cfg.Clock.Now()
		for i, candidate := range candidates {
			rec, err := recs[i], errs[i]
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if errors.Is(err, store.ErrCorrupt) {
				m.cfg.Logger.Warn("stored certificate is corrupt and will be replaced", "name", candidate, "error", err)
				return true, nil
			}
			if err != nil {
				return false, err
			}
			lifetime := rec.NotAfter.Sub(rec.NotBefore)
			if now.Before(rec.NotAfter.Add(-lifetime / 3)) {
				return false, nil
			}
		}
		return true, nil
	}
}

// releasingLease reports whether name's lease is this agent's own, from an
// order that ended while Redis could not take its release: it is free as
// soon as Redis answers, not when another agent's order ends.
func (m *Manager) releasingLease(name string) bool {
	_, ok := m.releasing.Load(name)
	return ok
}
