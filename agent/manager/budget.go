package manager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/stages"
	"github.com/certagent/certagent/agent/store"
)

// Priority orders demands on a short rate budget.
type Priority int

const (
	// PriorityNew is a name getting its first certificate.
	PriorityNew Priority = iota
	// PriorityRenewal is a certificate being replaced; it may use the share
	// of every budget that new names leave free.
	PriorityRenewal
)

// BudgetConfig mirrors the CA's rate limits, counted for the whole fleet in
// Redis. A limit of zero is not counted: the fleet then orders as fast as the
// CA lets it, and only the CA's rateLimited answers hold orders back.
// LetsEncryptLimits fills in Let's Encrypt's limits, which apply at its
// directories (IsLetsEncrypt). Zero windows take Let's Encrypt's.
type BudgetConfig struct {
	// Account identifies the ACME account (store.AccountID). Required.
	Account string
	// OrdersPerAccount new orders per OrdersWindow (default window: 3 h).
	OrdersPerAccount int
	OrdersWindow     time.Duration
	// CertsPerDomain certificates per registered domain per CertsWindow
	// (default window: 7 days).
	CertsPerDomain int
	CertsWindow    time.Duration
	// FailedPerName failed validations per name per FailedWindow before the
	// name waits (default window: 1 h).
	FailedPerName int
	FailedWindow  time.Duration
	// RenewalShare is the fraction of each budget that new names leave to
	// renewals. Default: 0.1.
	RenewalShare float64
	// OrderHold is the longest an order runs (every CA tried included): a
	// certificate slot taken for an order that was cut off (its agent
	// killed) is given back after it. Default: 10 min.
	OrderHold time.Duration
}

// Let's Encrypt's production limits
// (https://letsencrypt.org/docs/rate-limits/).
const (
	letsEncryptOrders  = 300 // new orders per account per 3 h
	letsEncryptCerts   = 50  // certificates per registered domain per 7 days
	letsEncryptFailed  = 5   // failed validations per name per hour
	defaultOrderHold   = 10 * time.Minute
	defaultRenewShare  = 0.1
	defaultOrderWindow = 3 * time.Hour
	defaultCertsWindow = 7 * 24 * time.Hour
	defaultFailWindow  = time.Hour
)

// LetsEncryptLimits returns cfg with each limit left at zero set to Let's
// Encrypt's production limit (its staging CA allows more, so they are safe
// there too).
func LetsEncryptLimits(cfg BudgetConfig) BudgetConfig {
	set := func(n *int, n0 int) {
		if *n == 0 {
			*n = n0
		}
	}
	set(&cfg.OrdersPerAccount, letsEncryptOrders)
	set(&cfg.CertsPerDomain, letsEncryptCerts)
	set(&cfg.FailedPerName, letsEncryptFailed)
	return cfg
}

// IsLetsEncrypt tells whether directory is one of Let's Encrypt's ACME
// directories (production or staging), whose limits the budgets follow by
// default.
func IsLetsEncrypt(directory string) bool {
	switch strings.TrimRight(directory, "/") {
	case acmeclient.LetsEncryptProduction, acmeclient.LetsEncryptStaging:
		return true
	}
	return false
}

// Budgets runs orders within the fleet's rate budgets and parks a scope
// when the CA answers rateLimited.
type Budgets struct {
	cfg BudgetConfig
	m   *Manager
}

// RateLimitedIssuer is an Issuer that can tell a rateLimited answer and its
// Retry-After. *acmeclient.Client implements it.
type RateLimitedIssuer interface {
	RateLimited(err error) (*acmeclient.RateLimit, bool)
}

// DeferredError says an order was not attempted, or was refused by the CA's
// rate limits, and may be tried again at Until. The name is not at fault.
type DeferredError struct {
	Until  time.Time
	Reason string
}

func (e *DeferredError) Error() string {
	return fmt.Sprintf("%s; not before %s", e.Reason, e.Until.UTC().Format(time.RFC3339))
}

// NewBudgets returns budgets for the orders of m.
func NewBudgets(m *Manager, cfg BudgetConfig) (*Budgets, error) {
	if cfg.Account == "" {
		return nil, errors.New("rate budgets: no account")
	}
	if cfg.OrdersPerAccount < 0 || cfg.CertsPerDomain < 0 || cfg.FailedPerName < 0 {
		return nil, errors.New("rate budgets: a limit below zero")
	}
	def := func(d *time.Duration, d0 time.Duration) {
		if *d <= 0 {
			*d = d0
		}
	}
	def(&cfg.OrdersWindow, defaultOrderWindow)
	def(&cfg.CertsWindow, defaultCertsWindow)
	def(&cfg.FailedWindow, defaultFailWindow)
	def(&cfg.OrderHold, defaultOrderHold)
	if cfg.RenewalShare <= 0 || cfg.RenewalShare >= 1 {
		cfg.RenewalShare = defaultRenewShare
	}
	return &Budgets{cfg: cfg, m: m}, nil
}

// CountsOrders tells whether new orders are counted against a limit.
func (b *Budgets) CountsOrders() bool { return b.cfg.OrdersPerAccount > 0 }

// RegisteredDomain is the name's domain under its public suffix
// ("a.b.example.co.uk" → "example.co.uk"); the name itself when it has none.
func RegisteredDomain(name string) string {
	d, err := publicsuffix.EffectiveTLDPlusOne(name)
	if err != nil {
		return name
	}
	return d
}

func (b *Budgets) reserved(limit int, prio Priority) int {
	if prio == PriorityRenewal {
		return 0
	}
	return int(math.Ceil(float64(limit) * b.cfg.RenewalShare))
}

// Issue orders a certificate for names through the Manager if every budget
// has room at prio, counting the order and the certificate. It returns a
// *DeferredError when a budget is spent or a scope is parked, and parks the
// scope the CA names when it answers rateLimited.
func (b *Budgets) Issue(ctx context.Context, names []string, prio Priority) (*store.CertRecord, error) {
	return b.Run(ctx, names, prio, func(ctx context.Context) (*store.CertRecord, error) {
		return b.m.issueReported(ctx, "issue", names, nil)
	})
}

// Run is Issue for any order of names: order is called only when every
// budget has room at prio (a renewal passes PriorityRenewal and an order
// function that calls Manager.Renew), and its error is read for rateLimited
// and failed validations the same way.
func (b *Budgets) Run(ctx context.Context, names []string, prio Priority, order func(context.Context) (*store.CertRecord, error)) (*store.CertRecord, error) {
	return b.runChecked(ctx, names, prio, nil, order)
}

// runChecked is Run with its checks (queueChecks) read already, or read
// now when checks is nil.
func (b *Budgets) runChecked(ctx context.Context, names []string, prio Priority, checks func() error,
	order func(context.Context) (*store.CertRecord, error)) (*store.CertRecord, error) {
	if len(names) == 0 {
		return nil, errors.New("issuing: no names")
	}
	if checks == nil {
		batch := b.m.cfg.Store.NewBatch()
		checks = b.queueChecks(ctx, batch, names)
		batch.Exec(ctx)
	}
	if err := checks(); err != nil {
		return nil, err
	}
	certs, _ := b.budgetsFor(names)
	res, err := b.reserve(ctx, b.m.cfg.Clock.Now(), prio, certs)
	stages.Mark(ctx, "budgets")
	if err != nil {
		return nil, err
	}
	rec, err := order(ctx)
	return b.settle(ctx, names, res, rec, err)
}

// issueChecked is Issue with its checks read already (see runChecked).
func (b *Budgets) issueChecked(ctx context.Context, names []string, prio Priority, checks func() error) (*store.CertRecord, error) {
	return b.runChecked(ctx, names, prio, checks, func(ctx context.Context) (*store.CertRecord, error) {
		return b.m.issueReported(ctx, "issue", names, nil)
	})
}

// queueChecks queues in batch the reads of the checks an order of names
// passes before its slots are reserved, all at once, and returns the
// checks, to call once batch ran: the scopes the CA rate-limited, then the
// names' failed validations, in that order. A check that holds the order
// back returns a *DeferredError.
func (b *Budgets) queueChecks(ctx context.Context, batch *store.Batch, names []string) func() error {
	now := b.m.cfg.Clock.Now()
	_, scopes := b.budgetsFor(names)
	parked := batch.ParkedUntil(ctx, now, scopes...)
	var failed []func() (bool, time.Time, error)
	if b.cfg.FailedPerName > 0 {
		for _, n := range names {
			failed = append(failed, batch.CheckBudget(ctx, b.failedBudget(n), now))
		}
	}
	return func() error {
		if err := checkParked(parked); err != nil {
			return err
		}
		return b.checkFailedValidations(names, failed)
	}
}

// budgetsFor returns the certificate budgets of the registered domains of
// names, and every scope the CA may have rate-limited for them.
func (b *Budgets) budgetsFor(names []string) (certs []store.Budget, scopes []store.Scope) {
	seen := map[string]bool{}
	scopes = []store.Scope{{Kind: "orders", Subject: b.cfg.Account}}
	for _, n := range names {
		scopes = append(scopes, store.Scope{Kind: "failed", Subject: n})
		if d := RegisteredDomain(n); !seen[d] {
			seen[d] = true
			certs = append(certs, store.Budget{Kind: "certs", Subject: d, Limit: b.cfg.CertsPerDomain,
				Window: b.cfg.CertsWindow, Hold: b.cfg.OrderHold})
			scopes = append(scopes, store.Scope{Kind: "certs", Subject: d})
		}
	}
	return certs, scopes
}

// checkParked defers the order while the CA's rate limit on any of the
// scopes read holds.
func checkParked(parked func() (time.Time, store.Scope, error)) error {
	until, scope, err := parked()
	if err != nil {
		return err
	}
	if !until.IsZero() {
		return &DeferredError{Until: until, Reason: fmt.Sprintf("the CA rate-limited %s %s", scope.Kind, scope.Subject)}
	}
	return nil
}

// checkFailedValidations defers the order while a name has used up its
// failed validations: failed holds the check of each of names.
func (b *Budgets) checkFailedValidations(names []string, failed []func() (bool, time.Time, error)) error {
	for i, check := range failed {
		ok, free, err := check()
		if err != nil {
			return err
		}
		if !ok {
			bg := b.failedBudget(names[i])
			return &DeferredError{Until: free, Reason: fmt.Sprintf("%d failed validations of %s within %s", bg.Limit, names[i], bg.Window)}
		}
	}
	return nil
}

// reservation is the slots one order holds in the rate budgets until it is
// settled.
type reservation struct {
	b          *Budgets
	member     string
	now        time.Time
	orders     store.Budget
	orderTaken bool
	certs      []store.Budget
}

// reserve takes a slot of the account's orders budget and of each domain's
// certificates budget, leaving the reserve of prio free, all in one step:
// nothing is held when one of them is spent.
func (b *Budgets) reserve(ctx context.Context, now time.Time, prio Priority, certs []store.Budget) (*reservation, error) {
	res := &reservation{b: b, member: eventID(), now: now, orders: b.ordersBudget()}
	var counted []store.Budget
	var reserved []int
	for _, bg := range append([]store.Budget{res.orders}, certs...) {
		if bg.Limit > 0 {
			counted, reserved = append(counted, bg), append(reserved, b.reserved(bg.Limit, prio))
		}
	}
	if len(counted) == 0 {
		return res, nil
	}
	for _, bg := range counted {
		if bg.Kind == "orders" {
			res.orderTaken = true
		} else {
			res.certs = append(res.certs, bg)
		}
	}
	ok, spent, free, err := b.m.cfg.Store.TakeBudgets(ctx, counted, now, reserved, res.member)
	if err != nil {
		// Redis may have counted the event and the answer got lost: it goes
		// back (returning an event that was not counted changes nothing).
		res.giveBack(ctx, true)
		return nil, err
	}
	if !ok {
		bg := counted[spent]
		return nil, &DeferredError{Until: free, Reason: fmt.Sprintf("the %s budget (%d per %s) is spent", bg, bg.Limit, bg.Window)}
	}
	return res, nil
}

// giveBack returns the certificate slots; with the orders slot too when
// nothing reached the CA.
func (r *reservation) giveBack(ctx context.Context, withOrder bool) {
	returned := r.certs
	if withOrder && r.orderTaken {
		returned = append(returned, r.orders)
	}
	for _, bg := range returned {
		if err := r.b.m.cfg.Store.ReturnBudget(context.WithoutCancel(ctx), bg, r.member); err != nil {
			r.b.m.cfg.Logger.Warn("returning a rate budget", "budget", bg.String(), "error", err)
		}
	}
}

// confirm keeps the certificate slots: the CA issued a certificate.
func (r *reservation) confirm(ctx context.Context) {
	for _, bg := range r.certs {
		if err := r.b.m.cfg.Store.ConfirmBudget(context.WithoutCancel(ctx), bg, r.member, r.now); err != nil {
			r.b.m.cfg.Logger.Warn("counting a certificate against its rate budget", "budget", bg.String(), "error", err)
		}
	}
}

// settle keeps or returns the slots of res by the outcome of the order,
// and reads its error for the CA's rate limits and failed validations.
func (b *Budgets) settle(ctx context.Context, names []string, res *reservation, rec *store.CertRecord, err error) (*store.CertRecord, error) {
	if errors.Is(err, errFromPeer) {
		// A peer site's certificate was taken: the CA issued nothing and
		// was sent no order.
		res.giveBack(ctx, true)
		return rec, nil
	}
	var issued issuedError
	if err == nil || errors.As(err, &issued) {
		// Stored or not, the certificate counts at the CA.
		res.confirm(ctx)
		return rec, err
	}
	if errors.Is(err, store.ErrLockHeld) || errors.Is(err, ErrAlreadyRenewed) {
		// Another agent holds the name, or renewed it already: nothing was
		// ordered. The record another agent stored goes back with the error.
		res.giveBack(ctx, true)
		return rec, err
	}
	// No certificate came of the order. It counts as a new order unless it
	// failed before the CA created one, with no answer from the CA at all.
	res.giveBack(ctx, neverReachedCA(err))
	if rl, ok := b.rateLimited(err); ok {
		return nil, b.park(ctx, names, rl, err)
	}
	if acmeclient.FailedValidation(err) && b.cfg.FailedPerName > 0 {
		b.countFailedValidation(ctx, names)
	}
	return nil, err
}

// park holds back every order of the scope the CA rate-limited until it
// says, and defers this one.
func (b *Budgets) park(ctx context.Context, names []string, rl *acmeclient.RateLimit, err error) error {
	kind, subject := "orders", b.cfg.Account
	switch rl.Scope {
	case acmeclient.ScopeDomain:
		kind, subject = "certs", RegisteredDomain(names[0])
	case acmeclient.ScopeName:
		kind, subject = "failed", names[0]
	}
	if perr := b.m.cfg.Store.Park(ctx, kind, subject, rl.Until); perr != nil {
		return errors.Join(err, perr)
	}
	b.m.cfg.Logger.Warn("the CA rate-limited us", "scope", kind, "subject", subject,
		"until", rl.Until.UTC().Format(time.RFC3339), "detail", rl.Detail)
	return &DeferredError{Until: rl.Until, Reason: fmt.Sprintf("the CA rate-limited %s %s: %s", kind, subject, rl.Detail)}
}

// countFailedValidation counts a refused validation against each name.
func (b *Budgets) countFailedValidation(ctx context.Context, names []string) {
	for _, n := range names {
		bg := b.failedBudget(n)
		if err := b.m.cfg.Store.NoteBudgetEvent(ctx, bg, b.m.cfg.Clock.Now(), eventID()); err != nil {
			b.m.cfg.Logger.Warn("counting a failed validation", "name", n, "error", err)
		}
	}
}

func (b *Budgets) rateLimited(err error) (*acmeclient.RateLimit, bool) {
	if rl, ok := b.m.cfg.Issuer.(RateLimitedIssuer); ok {
		return rl.RateLimited(err)
	}
	return acmeclient.RateLimitOf(err)
}

// neverReachedCA tells an order that failed before any CA created one
// (Manager.issue's noOrderError) and got no answer from any CA: each was
// not asked (the fleet knows it is down) or failed at the connection
// (refused, reset, timed out, no route) with no ACME problem document and
// no HTTP status. Its new-order request was then not sent, or not answered;
// one whose answer was lost on its way back is counted by the CA but not
// here, and the CA's rateLimited answer covers that.
func neverReachedCA(err error) bool {
	var unplaced noOrderError
	// errNotStarted: not asked either, the agent shut down first.
	return errors.As(err, &unplaced) && acmeclient.Unanswered(unplaced, errNotStarted)
}

func eventID() string {
	var raw [8]byte
	_, _ = rand.Read(raw[:])
	return hex.EncodeToString(raw[:])
}

func (b *Budgets) ordersBudget() store.Budget {
	return store.Budget{Kind: "orders", Subject: b.cfg.Account, Limit: b.cfg.OrdersPerAccount, Window: b.cfg.OrdersWindow}
}

func (b *Budgets) failedBudget(name string) store.Budget {
	return store.Budget{Kind: "failed", Subject: name, Limit: b.cfg.FailedPerName, Window: b.cfg.FailedWindow}
}

// OrdersLeft is how many new orders the account's budget allows now; an
// error when new orders are not counted (see CountsOrders).
func (b *Budgets) OrdersLeft(ctx context.Context) (int, error) {
	orders := b.ordersBudget()
	if orders.Limit == 0 {
		return 0, errors.New("new orders are not counted against a limit")
	}
	used, err := b.m.cfg.Store.BudgetUsed(ctx, orders, b.m.cfg.Clock.Now())
	if err != nil {
		return 0, err
	}
	return max(orders.Limit-int(used), 0), nil
}
