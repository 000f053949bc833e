package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

func TestLetsEncryptLimitsApplyAtLetsEncryptOnly(t *testing.T) {
	for dir, want := range map[string]bool{
		acmeclient.LetsEncryptProduction:       true,
		acmeclient.LetsEncryptStaging:          true,
		acmeclient.LetsEncryptProduction + "/": true,
		"https://127.0.0.1:14000/dir":          false,
		"https://acme.zerossl.com/v2/DV90":     false,
	} {
		if got := IsLetsEncrypt(dir); got != want {
			t.Errorf("IsLetsEncrypt(%s) = %t", dir, got)
		}
	}
	cfg := LetsEncryptLimits(BudgetConfig{Account: "acct", CertsPerDomain: 70})
	if cfg.OrdersPerAccount != 300 || cfg.CertsPerDomain != 70 || cfg.FailedPerName != 5 {
		t.Errorf("LetsEncryptLimits kept or filled in %+v; want 300 orders, the configured 70 certificates, 5 failures", cfg)
	}
}

// Without limits, nothing is counted: 100 names under one registered domain
// are ordered (Let's Encrypt's budget would stop at 50).
func TestBudgetsWithoutLimitsCountNothing(t *testing.T) {
	issuer := &fakeIssuer{}
	m, _, r := newTestManager(t, issuer)
	b, err := NewBudgets(m, BudgetConfig{Account: "acct"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 100 {
		if _, err := b.Issue(ctx, []string{fmt.Sprintf("n%03d.many.example", i)}, PriorityNew); err != nil {
			t.Fatalf("name %d: %v", i, err)
		}
	}
	if keys := r.Client.Keys(ctx, "certagent:budget*").Val(); len(keys) != 0 {
		t.Errorf("budgets counted without limits: %v", keys)
	}
	if b.CountsOrders() {
		t.Error("CountsOrders without a limit")
	}
	if _, err := b.OrdersLeft(ctx); err == nil {
		t.Error("OrdersLeft answered without a limit")
	}
}

// An order that ends without a certificate gives its certificate slot back:
// at once when it fails, after the hold when its agent was killed. Its new
// order stays counted (the CA counts it).
func TestBudgetsGiveBackTheSlotOfAnOrderWithoutACertificate(t *testing.T) {
	issuer := &fakeIssuer{fail: errors.New("the CA refused the order")}
	m, st, _ := newTestManager(t, issuer)
	clock := testenv.NewClock(time.Now())
	m.cfg.Clock = clock
	b, err := NewBudgets(m, BudgetConfig{Account: "acct", OrdersPerAccount: 100, CertsPerDomain: 2,
		RenewalShare: 0.01, OrderHold: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 3 {
		_, err := b.Issue(ctx, []string{fmt.Sprintf("f%d.example.com", i)}, PriorityRenewal)
		var deferred *DeferredError
		if errors.As(err, &deferred) {
			t.Fatalf("failed order %d was deferred: the slots of the failed orders were kept: %v", i, err)
		}
	}
	if n := issuer.orders.Load(); n != 3 {
		t.Fatalf("%d orders reached the CA, want 3", n)
	}
	used, err := st.BudgetUsed(ctx, b.ordersBudget(), clock.Now())
	if err != nil || used != 3 {
		t.Errorf("%d new orders counted (%v), want the 3 the CA saw", used, err)
	}

	// An order whose agent is killed: the order never returns.
	issuer.fail = nil
	cut := make(chan struct{})
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := b.Run(ctx, []string{"killed.example.com"}, PriorityRenewal, func(context.Context) (*store.CertRecord, error) {
			close(started)
			<-cut
			return nil, errors.New("cut off")
		})
		done <- err
	}()
	<-started
	if _, err := b.Issue(ctx, []string{"a.example.com"}, PriorityRenewal); err != nil {
		t.Fatal(err)
	}
	var deferred *DeferredError
	if _, err := b.Issue(ctx, []string{"b.example.com"}, PriorityRenewal); !errors.As(err, &deferred) {
		t.Fatalf("third certificate while the killed order's hold runs: %v, want deferred", err)
	}
	clock.Add(11 * time.Minute)
	if _, err := b.Issue(ctx, []string{"b.example.com"}, PriorityRenewal); err != nil {
		t.Errorf("after the hold of the killed order: %v, want its slot back", err)
	}
	if _, err := b.Issue(ctx, []string{"c.example.com"}, PriorityRenewal); !errors.As(err, &deferred) {
		t.Errorf("the issued certificates' slots were given back too: %v", err)
	}
	close(cut)
	<-done
}

// Against Pebble: an order whose validation fails gives its certificate slot
// back, so the next name under the domain is issued within a budget of one.
func TestFailedOrderGivesItsSlotBackAtPebble(t *testing.T) {
	s := startCAStack(t)
	m := s.manager(t, s.pebble.DirectoryURL, s.pebble.CARootsFile)
	b, err := NewBudgets(m, BudgetConfig{Account: "acct", CertsPerDomain: 1, RenewalShare: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing answers HTTP-01 on 127.0.0.2: the validation fails.
	const broken = "broken.slot.test"
	s.pebble.SetDNS(t, "/add-a", map[string]any{"host": broken + ".", "addresses": []string{"127.0.0.2"}})
	ctx := context.Background()
	_, err = b.Issue(ctx, []string{broken}, PriorityRenewal)
	var deferred *DeferredError
	if err == nil || errors.As(err, &deferred) {
		t.Fatalf("order with a failing validation: %v, want the CA's refusal", err)
	}
	if _, err := b.Issue(ctx, []string{"good.slot.test"}, PriorityRenewal); err != nil {
		t.Fatalf("the failed order kept the only slot of slot.test: %v", err)
	}
	if _, err := b.Issue(ctx, []string{"other.slot.test"}, PriorityRenewal); !errors.As(err, &deferred) {
		t.Errorf("a second certificate within a budget of one: %v, want deferred", err)
	}
	if n := s.pebble.OrdersCreated(t); n != 2 {
		t.Errorf("%d orders at Pebble, want 2", n)
	}
}

// A certificate taken from a peer site was issued by no CA and ordered from
// none: its certificate slot and its new-orders slot are given back.
func TestBudgetsGiveBackTheSlotsOfAPeerCertificate(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, _ := newTestManager(t, issuer)
	ctx := context.Background()
	held := heldAtAPeer(t, m, "peer.budget.example")
	m.cfg.Peers = &fakePeers{existing: held}
	b, err := NewBudgets(m, BudgetConfig{Account: "acct", OrdersPerAccount: 10, CertsPerDomain: 1, RenewalShare: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := b.Issue(ctx, []string{"peer.budget.example"}, PriorityRenewal)
	if err != nil || rec.Fingerprint != held.Fingerprint {
		t.Fatalf("Issue = %v, %v; want the peer's certificate", rec, err)
	}
	certs := store.Budget{Kind: "certs", Subject: "budget.example", Limit: 1, Window: b.cfg.CertsWindow}
	for _, bg := range []store.Budget{b.ordersBudget(), certs} {
		if used, err := st.BudgetUsed(ctx, bg, m.cfg.Clock.Now()); err != nil || used != 0 {
			t.Errorf("%s: %d counted (%v) for a peer's certificate, want 0", bg, used, err)
		}
	}
	// The domain's only slot is still free for an order of this site.
	m.cfg.Peers = &fakePeers{}
	if _, err := b.Issue(ctx, []string{"own.budget.example"}, PriorityRenewal); err != nil {
		t.Errorf("an order after the peer's certificate: %v, want its slot", err)
	}
	if used, err := st.BudgetUsed(ctx, b.ordersBudget(), m.cfg.Clock.Now()); err != nil || used != 1 {
		t.Errorf("%d new orders counted (%v), want the 1 placed", used, err)
	}
}

// Against Pebble behind a proxy that resets every connection (a CA down
// when the agent starts): the order never reached the CA, so its new-orders
// slot is given back, as is that of the next order, not sent to the CA the
// fleet knows is down; the next order, with the CA back, is counted.
func TestOrderThatNeverReachedTheCAGivesItsOrderSlotBack(t *testing.T) {
	s := startProxiedStack(t)
	s.proxy.SetDown(true)
	client := acmeclient.NewLazy(acmeclient.Config{DirectoryURL: s.proxy.DirectoryURL, Email: "ops@example.test",
		CARootFiles: []string{s.proxy.CARootsFile}}, s.st, acmeclient.NewHTTP01Provider(s.st, 0))
	m := New(Config{Store: s.st, Issuer: client, Logger: quietLogger(), Clock: s.clock})
	b, err := NewBudgets(m, BudgetConfig{Account: "acct", OrdersPerAccount: 10, CertsPerDomain: 5, RenewalShare: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	used := func() int64 {
		t.Helper()
		n, err := s.st.BudgetUsed(ctx, b.ordersBudget(), s.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	_, err = b.Issue(ctx, []string{"down.unreached.test"}, PriorityRenewal)
	var deferred *DeferredError
	if err == nil || errors.As(err, &deferred) {
		t.Fatalf("order with the CA down: %v, want a failure", err)
	}
	if s.proxy.DownConnects() == 0 {
		t.Fatal("the order never tried the CA")
	}
	if n := used(); n != 0 {
		t.Errorf("%d new orders counted for an order the CA never answered (%v), want 0", n, err)
	}
	// The fleet now knows the CA is down: the next order does not ask it,
	// and counts no new order either.
	tried := s.proxy.DownConnects()
	if _, err := b.Issue(ctx, []string{"known.unreached.test"}, PriorityRenewal); !acmeclient.IsOutage(err) {
		t.Fatalf("order with the CA known down: %v, want the outage", err)
	}
	if s.proxy.DownConnects() != tried {
		t.Error("an order asked the CA the fleet knows is down")
	}
	if n := used(); n != 0 {
		t.Errorf("%d new orders counted for orders no CA answered, want 0", n)
	}

	s.proxy.SetDown(false)
	// What the agents' probe does when the CA answers again.
	if err := s.st.ClearCADown(ctx, s.proxy.DirectoryURL); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Issue(ctx, []string{"up.unreached.test"}, PriorityRenewal); err != nil {
		t.Fatalf("order with the CA back: %v", err)
	}
	if n := used(); n != 1 {
		t.Errorf("%d new orders counted, want the 1 the CA created", n)
	}
	if got := len(s.proxy.Orders()); got != 1 {
		t.Errorf("%d orders at the CA, want 1", got)
	}
}

// Only an order that no CA answered gives its new-orders slot back: a
// problem document or a 5xx answer came from the CA, which may count it.
func TestNeverReachedCATellsUnansweredOrders(t *testing.T) {
	refused := &url.Error{Op: "Post", URL: "https://ca.test/new-order",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	failing := &acme.ProblemDetails{HTTPStatus: 503, Type: "urn:ietf:params:acme:error:serverInternal"}
	for _, c := range []struct {
		what string
		err  error
		want bool
	}{
		{"connection refused", noOrderError{[]error{fmt.Errorf("obtaining: %w", refused)}}, true},
		{"the CA known down, not asked", noOrderError{[]error{&acmeclient.OutageError{Reason: "CA unreachable"}}}, true},
		{"refused at every CA", noOrderError{[]error{refused, acmeclient.AsOutage(refused, "https://ca2.test/dir")}}, true},
		{"a 5xx answer", noOrderError{[]error{acmeclient.AsOutage(failing, "https://ca.test/dir")}}, false},
		{"refused at one CA, answered at the next", noOrderError{[]error{refused, failing}}, false},
		{"not a transport failure", noOrderError{[]error{errors.New("the CA refused the order")}}, false},
		{"an order the CA created", refused, false},
	} {
		if got := neverReachedCA(c.err); got != c.want {
			t.Errorf("%s: neverReachedCA = %t, want %t", c.what, got, c.want)
		}
	}
}

// takenOverIssuer issues like fakeIssuer, then has another agent take the
// name's lease before the certificate is stored: the fenced write refuses
// the certificate the CA has issued.
type takenOverIssuer struct {
	fakeIssuer
	st  *store.Store
	rdb redis.UniversalClient
}

func (f *takenOverIssuer) Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error) {
	cert, err := f.fakeIssuer.Obtain(ctx, names)
	if err != nil {
		return nil, err
	}
	// The lease runs out unseen and another agent takes the name.
	if err := f.rdb.Del(ctx, f.st.Keys().Lock(names[0])).Err(); err != nil {
		return nil, err
	}
	if _, err := f.st.AcquireLock(ctx, names[0], time.Minute); err != nil {
		return nil, err
	}
	return cert, nil
}

// A certificate the CA issued counts against the domain's budget even when
// it is not stored (the fenced write refused it): the CA counted it.
func TestBudgetsKeepTheSlotOfACertificateIssuedButNotStored(t *testing.T) {
	issuer := &takenOverIssuer{}
	m, st, r := newTestManager(t, issuer)
	issuer.st, issuer.rdb = st, r.Client
	b, err := NewBudgets(m, BudgetConfig{Account: "acct", CertsPerDomain: 5, RenewalShare: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := b.Issue(ctx, []string{"fenced.example.com"}, PriorityRenewal); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("order whose lease was taken over: %v, want ErrFenced", err)
	}
	certs := store.Budget{Kind: "certs", Subject: "example.com", Limit: 5, Window: 7 * 24 * time.Hour}
	if used, err := st.BudgetUsed(ctx, certs, time.Now()); err != nil || used != 1 {
		t.Errorf("%d certificates counted (%v), want the 1 the CA issued", used, err)
	}
}

// lostAnswerHook lets Redis run the scripts that take rate budgets and
// then fails them as a connection dropped before the answer would: Redis
// counted the event, the agent cannot tell.
type lostAnswerHook struct{}

func (lostAnswerHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (lostAnswerHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := next(ctx, cmd); err != nil || !takesBudgets(cmd.Args()) {
			return err
		}
		lost := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
		cmd.SetErr(lost)
		return lost
	}
}

func (lostAnswerHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// takesBudgets tells a script run whose first key is a budget of orders.
func takesBudgets(args []any) bool {
	if len(args) < 4 || (args[0] != "evalsha" && args[0] != "eval") {
		return false
	}
	key, _ := args[3].(string)
	return key == store.Keys{}.Budget("orders", "acct")
}

// TestBudgetsGiveBackWhatALostAnswerMayHaveTaken: the budgets' script ran
// but its answer was lost: the order is not placed, and the slots the
// script may have taken go back, the orders slot too (it is not held: it
// would stay taken for the whole window).
func TestBudgetsGiveBackWhatALostAnswerMayHaveTaken(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, r := newTestManager(t, issuer)
	b, err := NewBudgets(m, BudgetConfig{Account: "acct", OrdersPerAccount: 100, CertsPerDomain: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r.Client.AddHook(lostAnswerHook{})
	if _, err := b.Issue(ctx, []string{"a.example.com"}, PriorityNew); err == nil {
		t.Fatal("the order went on without the budgets' answer")
	}
	if n := issuer.orders.Load(); n != 0 {
		t.Fatalf("%d orders reached the CA without the budgets' answer", n)
	}
	now := m.cfg.Clock.Now()
	for _, bg := range []store.Budget{b.ordersBudget(), {Kind: "certs", Subject: "example.com", Limit: 2, Window: b.cfg.CertsWindow}} {
		if used, err := st.BudgetUsed(ctx, bg, now); err != nil || used != 0 {
			t.Errorf("%s: %d events counted (%v), want none", bg, used, err)
		}
	}
}
