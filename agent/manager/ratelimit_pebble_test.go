package manager

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
)

// TestRateLimitedDefersEachNameUntilItsOwnRetryAfter: two names are refused
// by the CA at once, each with its own Retry-After; each is deferred until
// its own, and a name requested with them is issued.
func TestRateLimitedDefersEachNameUntilItsOwnRetryAfter(t *testing.T) {
	s := startCAStack(t)
	proxy := s.consumeThroughProxy(t)

	waits := map[string]time.Duration{"soon.example.test": 10 * time.Minute, "later.example.test": 2 * time.Hour}
	for name, wait := range waits {
		// A limit about the name itself, so each parks only its name.
		proxy.Inject(testenv.Fault{Kind: testenv.FaultRateLimited, Times: 1, Path: testenv.PathNewOrder,
			Names: []string{name}, RetryAfter: wait,
			Detail: fmt.Sprintf("too many failed authorizations (5) for %q in the last 1h0m0s", name)})
	}
	// Queued together: the consumer's workers order them side by side.
	request(t, s.redis.Client, s.st, "soon.example.test")
	request(t, s.redis.Client, s.st, "later.example.test")
	s.request(t, "other.example.test")

	for name, wait := range waits {
		f := s.failure(t, name)
		got := f.NextAttempt.Sub(s.clock.Now())
		if !strings.Contains(f.LastError, "rate-limited") || got < wait-time.Minute || got > wait+time.Minute {
			t.Errorf("%s: %+v (next attempt in %s); want deferred for its own Retry-After of %s", name, f, got.Round(time.Second), wait)
		}
	}
	if !s.hasCert("other.example.test") {
		t.Error("a name the CA did not refuse was not issued")
	}
	if n := proxy.Faulted(testenv.FaultRateLimited); n != 2 {
		t.Errorf("%d rateLimited answers given, want 2", n)
	}
}

// consumeThroughProxy runs a consumer with budgets for *.example.test whose
// orders go through the CA proxy in front of the stack's Pebble, and returns
// the proxy.
func (s *caStack) consumeThroughProxy(t *testing.T) *testenv.CAProxy {
	t.Helper()
	proxy := testenv.StartCAProxy(t, s.pebble)
	m := s.manager(t, proxy.DirectoryURL, proxy.CARootsFile)
	budgets, err := NewBudgets(m, BudgetConfig{Account: store.AccountID(proxy.DirectoryURL, "ops@example.test")})
	if err != nil {
		t.Fatal(err)
	}
	allow, _ := policy.ParsePolicy([]string{"*.example.test"})
	s.consume(t, ConsumerConfig{Manager: m, Policy: allow, Budgets: budgets})
	return proxy
}
