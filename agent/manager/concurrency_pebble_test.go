package manager

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
)

// adaptiveThroughProxy runs a consumer whose orders go through the strict CA
// proxy, with the adaptive number of orders at once and budgets cfg.
func (s *caStack) adaptiveThroughProxy(t *testing.T, conc ConcurrencyConfig, budget BudgetConfig) (*testenv.CAProxy, *Concurrency) {
	t.Helper()
	proxy := testenv.StartCAProxy(t, s.pebble)
	m := s.manager(t, proxy.DirectoryURL, proxy.CARootsFile)
	conc.Logger = quietLogger()
	c := NewConcurrency(conc)
	m.cfg.Concurrency = c
	budget.Account = store.AccountID(proxy.DirectoryURL, "ops@example.test")
	budgets, err := NewBudgets(m, budget)
	if err != nil {
		t.Fatal(err)
	}
	allow, _ := policy.ParsePolicy([]string{"*.example.test"})
	s.consume(t, ConsumerConfig{Manager: m, Policy: allow, Budgets: budgets})
	return proxy, c
}

// burst requests every name at once and waits until each entry is handled.
func (s *caStack) burst(t *testing.T, names []string) {
	t.Helper()
	for _, n := range names {
		request(t, s.redis.Client, s.st, n)
	}
	waitFor(t, fmt.Sprintf("the %d entries handled", len(names)), func() bool {
		groups, err := s.redis.Client.XInfoGroups(context.Background(), s.st.Keys().Requests()).Result()
		return err == nil && len(groups) > 0 && groups[0].Lag == 0 && groups[0].Pending == 0
	})
}

func burstNames(prefix string, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%d.example.test", prefix, i)
	}
	return names
}

// mostAtOnce is the largest number of orders the proxy saw in flight
// together (from the answer to newOrder to the order's last request).
func mostAtOnce(orders []testenv.ProxyOrder) int {
	most := 0
	for _, o := range orders {
		n := 0
		for _, p := range orders {
			if !p.Start.After(o.Start) && p.Last.After(o.Start) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

// TestConcurrencyAtTheStrictCAGrowsThenBacksOffOnRateLimitedAnd5xx: a burst
// of names raises the orders at once from the floor, never past the
// ceiling; a rateLimited answer halves it, and so does a 500 after the calm.
func TestConcurrencyAtTheStrictCAGrowsThenBacksOffOnRateLimitedAnd5xx(t *testing.T) {
	s := startCAStack(t)
	proxy, c := s.adaptiveThroughProxy(t, ConcurrencyConfig{Floor: 2, Start: 2, Ceiling: 6, Calm: time.Millisecond}, BudgetConfig{})

	names := burstNames("burst", 16)
	s.burst(t, names)
	for _, n := range names {
		if !s.hasCert(n) {
			t.Fatalf("%s not issued", n)
		}
	}
	if got := c.Limit(); got != 6 {
		t.Fatalf("limit %d after 16 quick successes from 2, want the ceiling 6", got)
	}
	if most := mostAtOnce(proxy.Orders()); most > 6 {
		t.Errorf("%d orders at once at the CA, above the ceiling of 6", most)
	}

	proxy.Inject(testenv.Fault{Kind: testenv.FaultRateLimited, Times: 1, Path: testenv.PathNewOrder,
		Names: []string{"limited.example.test"}, RetryAfter: time.Hour,
		Detail: `too many failed authorizations (5) for "limited.example.test" in the last 1h0m0s`})
	s.burst(t, []string{"limited.example.test"})
	if proxy.Faulted(testenv.FaultRateLimited) != 1 {
		t.Fatalf("%d rateLimited answers given, want 1", proxy.Faulted(testenv.FaultRateLimited))
	}
	if got := c.Limit(); got != 3 {
		t.Errorf("limit %d after rateLimited, want 3 (halved from 6)", got)
	}

	time.Sleep(5 * time.Millisecond) // past the calm
	proxy.Inject(testenv.Fault{Kind: testenv.FaultServerInternal, Times: 1, Path: testenv.PathNewOrder,
		Names: []string{"failing.example.test"}})
	s.burst(t, []string{"failing.example.test"})
	if proxy.Faulted(testenv.FaultServerInternal) != 1 {
		t.Fatalf("%d 500 answers given, want 1", proxy.Faulted(testenv.FaultServerInternal))
	}
	if got := c.Limit(); got != 2 {
		t.Errorf("limit %d after a 500, want 2 (halved from 3, the floor)", got)
	}
	if c.Running() != 0 {
		t.Errorf("%d orders hold a slot after every entry was handled", c.Running())
	}
}

// TestConcurrencyNeverExceedsTheFleetBudget: with room for more orders at
// once than the orders budget leaves, a burst gets no more orders at the CA
// than the budget allows; the rest are deferred.
func TestConcurrencyNeverExceedsTheFleetBudget(t *testing.T) {
	s := startCAStack(t)
	// 6 new orders per window, of which new names may use 5 (a tenth, rounded
	// up, is kept for renewals).
	proxy, c := s.adaptiveThroughProxy(t, ConcurrencyConfig{Floor: 8, Ceiling: 16},
		BudgetConfig{OrdersPerAccount: 6, OrdersWindow: time.Hour})

	names := burstNames("budget", 12)
	s.burst(t, names)
	issued, deferred := 0, 0
	for _, n := range names {
		if s.hasCert(n) {
			issued++
			continue
		}
		if f, err := s.st.GetFailure(context.Background(), n); err == nil && f.Attempts == 0 {
			deferred++
		}
	}
	orders := len(proxy.Orders())
	if orders > 5 || issued != 5 {
		t.Errorf("%d orders at the CA and %d names issued for a budget of 5 new orders", orders, issued)
	}
	if deferred != len(names)-issued {
		t.Errorf("%d of the %d names not issued were deferred", deferred, len(names)-issued)
	}
	if c.Limit() < 8 {
		t.Errorf("limit %d: the budget's deferrals cut it below the floor", c.Limit())
	}
}
