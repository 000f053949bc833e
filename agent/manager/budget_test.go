package manager

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
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
	clock := &movableClock{now: time.Now()}
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
