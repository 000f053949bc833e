package manager

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

func TestRetryDelay(t *testing.T) {
	prev := time.Duration(0)
	for n := 1; n <= 15; n++ {
		lo := RetryDelay(n, time.Minute, 24*time.Hour, func() float64 { return 0.999 })
		hi := RetryDelay(n, time.Minute, 24*time.Hour, func() float64 { return 0 })
		if hi > 24*time.Hour || lo < hi*3/4 {
			t.Errorf("attempt %d: pause between %s and %s", n, lo, hi)
		}
		if n > 1 && lo < prev && hi < 24*time.Hour {
			t.Errorf("attempt %d: shortest pause %s is shorter than the longest before it %s", n, lo, prev)
		}
		prev = hi
	}
	if got := RetryDelay(1, time.Minute, 24*time.Hour, func() float64 { return 0 }); got != time.Minute {
		t.Errorf("first pause %s, want 1 min", got)
	}
	if got := RetryDelay(40, time.Minute, 24*time.Hour, func() float64 { return 0 }); got != 24*time.Hour {
		t.Errorf("pause after many failures %s, want the 24 h cap", got)
	}
}

// limitedIssuer answers rateLimited for every order while on.
type limitedIssuer struct {
	fakeIssuer
	limited atomic.Bool
	until   time.Time
	scope   acmeclient.RateLimitScope
}

func (l *limitedIssuer) Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error) {
	if l.limited.Load() {
		l.orders.Add(1)
		return nil, fmt.Errorf("creating the order: %w", &acme.ProblemDetails{Type: acme.RateLimitedErr, Detail: "too many new orders", HTTPStatus: 429})
	}
	return l.fakeIssuer.Obtain(ctx, names)
}

func (l *limitedIssuer) RateLimited(err error) (*acmeclient.RateLimit, bool) {
	var p *acme.ProblemDetails
	if !errors.As(err, &p) || p.Type != acme.RateLimitedErr {
		return nil, false
	}
	return &acmeclient.RateLimit{Until: l.until, Scope: l.scope, Detail: p.Detail}, true
}

func TestBudgetsKeepAShareForRenewals(t *testing.T) {
	issuer := &fakeIssuer{}
	m, _, _ := newTestManager(t, issuer)
	clock := testenv.NewClock(time.Now())
	m.cfg.Clock = clock
	b, err := NewBudgets(m, BudgetConfig{Account: "acct", OrdersPerAccount: 4, RenewalShare: 0.25, CertsPerDomain: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 3 {
		if _, err := b.Issue(ctx, []string{fmt.Sprintf("n%d.example.com", i)}, PriorityNew); err != nil {
			t.Fatalf("new name %d: %v", i, err)
		}
	}
	_, err = b.Issue(ctx, []string{"n3.example.com"}, PriorityNew)
	var deferred *DeferredError
	if !errors.As(err, &deferred) || !deferred.Until.After(clock.Now()) {
		t.Fatalf("fourth new name: %v, want deferred (the last slot is kept for renewals)", err)
	}
	if _, err := b.Issue(ctx, []string{"n0.example.com"}, PriorityRenewal); err != nil {
		t.Errorf("renewal with one slot left: %v", err)
	}
	if _, err := b.Issue(ctx, []string{"n1.example.com"}, PriorityRenewal); !errors.As(err, &deferred) {
		t.Errorf("renewal past the budget: %v, want deferred", err)
	}
	if got := issuer.orders.Load(); got != 4 {
		t.Errorf("%d orders reached the CA, want 4", got)
	}
	// The window passes: room again.
	clock.Add(3*time.Hour + time.Second)
	if _, err := b.Issue(ctx, []string{"n3.example.com"}, PriorityNew); err != nil {
		t.Errorf("after the window: %v", err)
	}

	// Certificates per registered domain, counted under the public suffix.
	b2, _ := NewBudgets(m, BudgetConfig{Account: "acct2", CertsPerDomain: 2, RenewalShare: 0.01})
	if _, err := b2.Issue(ctx, []string{"a.shop.example.co.uk"}, PriorityRenewal); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Issue(ctx, []string{"b.example.co.uk"}, PriorityRenewal); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Issue(ctx, []string{"c.example.co.uk"}, PriorityRenewal); !errors.As(err, &deferred) {
		t.Errorf("third certificate for example.co.uk: %v, want deferred", err)
	}
	if _, err := b2.Issue(ctx, []string{"c.other.co.uk"}, PriorityRenewal); err != nil {
		t.Errorf("another registered domain: %v", err)
	}
	if got := RegisteredDomain("a.b.example.co.uk"); got != "example.co.uk" {
		t.Errorf("RegisteredDomain = %s", got)
	}
}

func TestRateLimitedParksTheScope(t *testing.T) {
	issuer := &limitedIssuer{scope: acmeclient.ScopeAccount}
	m, st, _ := newTestManager(t, issuer)
	clock := testenv.NewClock(time.Now())
	m.cfg.Clock = clock
	m.cfg.Issuer = issuer
	b, _ := NewBudgets(m, BudgetConfig{Account: "acct"})
	ctx := context.Background()
	issuer.limited.Store(true)
	issuer.until = time.Now().Add(time.Hour)
	_, err := b.Issue(ctx, []string{"a.example.com"}, PriorityNew)
	var deferred *DeferredError
	if !errors.As(err, &deferred) || !deferred.Until.Equal(issuer.until) {
		t.Fatalf("rateLimited answer: %v, want deferred until the Retry-After", err)
	}
	// Every name waits: the account is parked, the CA is not asked.
	for _, name := range []string{"a.example.com", "b.example.org"} {
		if _, err := b.Issue(ctx, []string{name}, PriorityRenewal); !errors.As(err, &deferred) {
			t.Errorf("%s while parked: %v", name, err)
		}
	}
	if got := issuer.orders.Load(); got != 1 {
		t.Errorf("%d orders reached the CA while parked, want 1", got)
	}
	until, _, err := st.ParkedUntil(ctx, clock.Now(), store.Scope{Kind: "orders", Subject: "acct"})
	if err != nil || until.UnixMilli() != issuer.until.UnixMilli() {
		t.Errorf("parked until %s (%v), want %s", until, err, issuer.until)
	}
	clock.Add(time.Hour + time.Second)
	issuer.limited.Store(false)
	if _, err := b.Issue(ctx, []string{"b.example.org"}, PriorityNew); err != nil {
		t.Errorf("after the Retry-After: %v", err)
	}
}
