package manager

import (
	"context"
	"sync"
	"testing"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// firstRecordJournal calls atRecord before the first record of the journal
// it wraps: the order was just created at the CA.
type firstRecordJournal struct {
	acmeclient.OrderJournal
	once     *sync.Once
	atRecord func()
}

func (j firstRecordJournal) Record(ctx context.Context, o acmeclient.PendingOrder) error {
	j.once.Do(j.atRecord)
	return j.OrderJournal.Record(ctx, o)
}

// atOrderIssuer is the CA client calling atOrder when an order is created.
type atOrderIssuer struct {
	*acmeclient.Client
	atOrder func()
}

func (i atOrderIssuer) ObtainWith(ctx context.Context, names []string, opts acmeclient.OrderOptions) (*acmeclient.Certificate, error) {
	opts.Journal = firstRecordJournal{OrderJournal: opts.Journal, once: &sync.Once{}, atRecord: i.atOrder}
	return i.Client.ObtainWith(ctx, names, opts)
}

// TestANewNameReachesItsOrderInFourRoundTrips: from the worker taking a
// new name to its order at the CA, the agent waits for Redis four times,
// with every budget counted, whether a static rule or the allowlist in
// Redis allows the name: the failure record with the policy's reads (the
// cached denial, the allowlist); the issuing mark with every read the
// checks decide on (stored certificates, the CAs' state, parked scopes,
// failed validations); the budgets' slots; the lease with the CA's state
// and the running order. Each round trip more adds to every new name's
// first handshake (0.5 to 1 ms each on a quiet machine, far more under
// load).
func TestANewNameReachesItsOrderInFourRoundTrips(t *testing.T) {
	s := startCAStack(t)
	client, err := acmeclient.New(context.Background(), acmeclient.Config{
		DirectoryURL: s.pebble.DirectoryURL, Email: "ops@example.test", CARootFiles: []string{s.pebble.CARootsFile},
	}, s.st, acmeclient.NewHTTP01Provider(s.st, 0))
	if err != nil {
		t.Fatal(err)
	}
	trips := &testenv.RoundTrips{}
	counting := false
	atOrder := -1
	issuer := atOrderIssuer{Client: client, atOrder: func() {
		if counting {
			atOrder = trips.Count()
		}
	}}
	m := New(Config{Store: s.st, Issuer: issuer, Logger: quietLogger(), Clock: s.clock,
		Events: telemetry.NewHub(quietLogger(), s.events)})
	budgets, err := NewBudgets(m, BudgetConfig{Account: "acct", OrdersPerAccount: 100, CertsPerDomain: 100, FailedPerName: 5})
	if err != nil {
		t.Fatal(err)
	}
	static, err := policy.ParsePolicy([]string{"*.static.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.st.AddAllowRules(ctx, "*.listed.example.test"); err != nil {
		t.Fatal(err)
	}
	c := NewConsumer(ConsumerConfig{Store: s.st, Manager: m, Policy: static, Budgets: budgets, Name: "test-agent",
		Logger: quietLogger()})
	issue := func(name string) {
		t.Helper()
		if ack := c.decide(ctx, quietLogger(), store.Request{Name: name}); !ack || !s.hasCert(name) {
			t.Fatalf("%s was not issued", name)
		}
	}
	// The first name registers the account and loads the scripts.
	issue("first.static.example.test")
	s.redis.Client.AddHook(trips)
	counting = true
	for _, name := range []string{"second.static.example.test", "first.listed.example.test"} {
		start := trips.Count()
		issue(name)
		if n := atOrder - start; n != 4 {
			t.Errorf("%s: %d round trips to Redis before the order, want 4: %q", name, n, trips.Sent(atOrder)[start:])
		}
	}
}
