package manager

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// caStack is real Redis, Pebble with its DNS stub, and nginx answering the
// HTTP-01 challenges from Redis, for the gate's tests against a real CA.
type caStack struct {
	redis  *testenv.Redis
	st     *store.Store
	pebble *testenv.Pebble
	clock  *testenv.Clock
	events *recordingSink // what the stack's managers report
}

func startCAStack(t *testing.T) *caStack {
	t.Helper()
	r := testenv.StartRedis(t)
	httpPort := testenv.FreePort(t)
	p := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: httpPort})
	testenv.StartNginx(t, testenv.NginxOptions{RedisURL: r.URL, HTTPPort: httpPort})
	return &caStack{redis: r, st: store.New(r.Client, store.Keys{}), pebble: p, clock: testenv.NewClock(time.Now()),
		events: &recordingSink{}}
}

// manager returns a Manager ordering from directory (Pebble or a front),
// trusting roots, on the stack's clock.
func (s *caStack) manager(t *testing.T, directory string, roots ...string) *Manager {
	t.Helper()
	client, err := acmeclient.New(context.Background(), acmeclient.Config{
		DirectoryURL: directory, Email: "ops@example.test", CARootFiles: roots,
	}, s.st, acmeclient.NewHTTP01Provider(s.st, 0))
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{Store: s.st, Issuer: client, Logger: quietLogger(), Clock: s.clock,
		Events: telemetry.NewHub(quietLogger(), s.events)})
}

// consume runs a consumer until the returned stop is called (an agent
// restart is a stop and a new consumer: everything it remembers is in Redis).
func (s *caStack) consume(t *testing.T, cfg ConsumerConfig) (stop func()) {
	t.Helper()
	cfg.Store, cfg.Name, cfg.Block, cfg.Logger = s.st, "test-agent", 100*time.Millisecond, quietLogger()
	cfg.ShutdownGrace = 5 * time.Second
	c := NewConsumer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the consumer did not stop")
		}
	}
	t.Cleanup(stop)
	return stop
}

// request appends name to the stream and waits until an agent has handled
// every entry (delivered and acknowledged).
func (s *caStack) request(t *testing.T, name string) {
	t.Helper()
	request(t, s.redis.Client, s.st, name)
	waitFor(t, "the entry for "+name+" handled", func() bool {
		groups, err := s.redis.Client.XInfoGroups(context.Background(), s.st.Keys().Requests()).Result()
		if err != nil || len(groups) == 0 {
			return false
		}
		return groups[0].Lag == 0 && groups[0].Pending == 0
	})
}

func (s *caStack) failure(t *testing.T, name string) *store.Failure {
	t.Helper()
	f, err := s.st.GetFailure(context.Background(), name)
	if err != nil {
		t.Fatalf("failure record of %s: %v", name, err)
	}
	return f
}

func (s *caStack) hasCert(name string) bool {
	_, err := s.st.GetCert(context.Background(), name)
	return err == nil
}

func TestPreflightRefusesNamesThatResolveElsewhereOrForbidTheCA(t *testing.T) {
	s := startCAStack(t)
	s.pebble.SetDNS(t, "/add-a", map[string]any{"host": "elsewhere.example.test.", "addresses": []string{"192.0.2.10"}})
	s.pebble.SetDNS(t, "/add-caa", map[string]any{"host": "caa.example.test.",
		"policies": []map[string]string{{"tag": "issue", "value": "other-ca.example; account=1"}}})
	s.pebble.SetDNS(t, "/add-caa", map[string]any{"host": "mine.example.test.",
		"policies": []map[string]string{{"tag": "issue", "value": "pebble.example"}}})
	pre, err := policy.NewPreflight(policy.PreflightConfig{
		Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, CAAIdentities: []string{"Pebble.Example."},
		Resolver: s.pebble.DNSAddr, Timeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	allow, _ := policy.ParsePolicy([]string{"*.example.test"})
	s.consume(t, ConsumerConfig{Manager: s.manager(t, s.pebble.DirectoryURL, s.pebble.CARootsFile), Policy: allow, Preflight: pre})

	for name, want := range map[string]string{
		"elsewhere.example.test": "resolves to 192.0.2.10, none of them an address of this fleet",
		"x.caa.example.test":     `permit only ["other-ca.example"]`,
	} {
		s.request(t, name)
		f := s.failure(t, name)
		if !strings.Contains(f.LastError, want) || f.Attempts != 1 || !f.NextAttempt.After(s.clock.Now()) {
			t.Errorf("%s: failure %+v, want %q and a next attempt", name, f, want)
		}
	}
	if n := s.pebble.OrdersCreated(t); n != 0 {
		t.Fatalf("%d orders reached the CA for names that failed pre-flight", n)
	}
	// Names that pass: the default A record 127.0.0.1, a CAA set naming the CA.
	for _, name := range []string{"ok.example.test", "a.mine.example.test"} {
		s.request(t, name)
		if !s.hasCert(name) {
			t.Errorf("%s passes pre-flight but got no certificate", name)
		}
	}
	if n := s.pebble.OrdersCreated(t); n != 2 {
		t.Errorf("%d orders, want 2", n)
	}
}

func TestBackoffGrowsAndSurvivesARestart(t *testing.T) {
	s := startCAStack(t)
	// Nothing answers HTTP-01 on 127.0.0.2: every validation fails.
	const name = "unreachable.example.test"
	s.pebble.SetDNS(t, "/add-a", map[string]any{"host": name + ".", "addresses": []string{"127.0.0.2"}})
	allow, _ := policy.ParsePolicy([]string{"*.example.test"})
	m := s.manager(t, s.pebble.DirectoryURL, s.pebble.CARootsFile)
	budgets, _ := NewBudgets(m, BudgetConfig{Account: "acct"})
	stop := s.consume(t, ConsumerConfig{Manager: m, Policy: allow, Budgets: budgets})

	s.request(t, name)
	first := s.failure(t, name)
	if first.Attempts != 1 || s.pebble.OrdersCreated(t) != 1 {
		t.Fatalf("after the first failure: %+v, %d orders", first, s.pebble.OrdersCreated(t))
	}
	firstPause := first.NextAttempt.Sub(first.LastAttempt)
	if firstPause < 45*time.Second || firstPause > time.Minute {
		t.Errorf("first pause %s, want 1 min less up to a quarter", firstPause)
	}
	// Seen again before its next attempt: left alone.
	s.request(t, name)
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("%d orders: a name in backoff was ordered again", n)
	}

	// A new agent process knows nothing but Redis.
	stop()
	m2 := s.manager(t, s.pebble.DirectoryURL, s.pebble.CARootsFile)
	budgets2, _ := NewBudgets(m2, BudgetConfig{Account: "acct"})
	s.consume(t, ConsumerConfig{Manager: m2, Policy: allow, Budgets: budgets2})
	s.request(t, name)
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("%d orders: the restarted agent forgot the backoff", n)
	}
	s.clock.Add(firstPause + time.Second)
	s.request(t, name)
	second := s.failure(t, name)
	secondPause := second.NextAttempt.Sub(second.LastAttempt)
	if second.Attempts != 2 || secondPause <= firstPause || s.pebble.OrdersCreated(t) != 2 {
		t.Errorf("after the second failure: %+v (pause %s after %s), %d orders; want 2 attempts and a longer pause",
			second, secondPause, firstPause, s.pebble.OrdersCreated(t))
	}
	// Once the CA can validate, the next attempt issues and the memory is cleared.
	s.pebble.SetDNS(t, "/clear-a", map[string]any{"host": name + "."})
	s.clock.Add(secondPause + time.Second)
	s.request(t, name)
	if !s.hasCert(name) {
		t.Fatalf("no certificate after the name became reachable: %+v", s.failure(t, name))
	}
	if _, err := s.st.GetFailure(context.Background(), name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("failure record left after issuance: %v", err)
	}
}

func TestAskURLDownMeansDenyAndALaterRetry(t *testing.T) {
	s := startCAStack(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ask, err := policy.NewAsk(policy.AskConfig{URL: "http://" + addr + "/ask", Timeout: 2 * time.Second, Clock: s.clock})
	if err != nil {
		t.Fatal(err)
	}
	m := s.manager(t, s.pebble.DirectoryURL, s.pebble.CARootsFile)
	s.consume(t, ConsumerConfig{Manager: m, Decider: policy.NewDecider(policy.DeciderConfig{Store: s.st, Ask: ask})})

	const name = "asked.example.test"
	s.request(t, name)
	f := s.failure(t, name)
	if s.hasCert(name) || !strings.Contains(f.LastError, "ask URL is unavailable") || f.Attempts != 0 {
		t.Fatalf("ask URL down: certificate %v, failure %+v; want refused for now", s.hasCert(name), f)
	}
	if d, _ := s.st.Denied(context.Background(), name); d != nil {
		t.Errorf("the outage was cached as a refusal: %+v", d)
	}

	// The ask URL comes up and allows the name; within the retry pause
	// nothing happens, after it the name is issued.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if r.URL.Query().Get("domain") != name {
			http.Error(w, "no", http.StatusForbidden)
		}
	}))
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	s.request(t, name)
	if s.hasCert(name) || asked.Load() != 0 {
		t.Errorf("retried before the pause: certificate %v, %d questions", s.hasCert(name), asked.Load())
	}
	s.clock.Add(2 * time.Minute)
	s.request(t, name)
	if !s.hasCert(name) || asked.Load() != 1 {
		t.Errorf("after the pause: certificate %v after %d questions; want issued", s.hasCert(name), asked.Load())
	}
	// A name the ask URL refuses never reaches the CA.
	s.request(t, "refused.example.test")
	if n := s.pebble.OrdersCreated(t); n != 1 {
		t.Errorf("%d orders, want only the allowed name's", n)
	}
}

func TestRateLimitedAnswerParksIssuanceUntilRetryAfter(t *testing.T) {
	s := startCAStack(t)
	proxy := s.consumeThroughProxy(t)

	proxy.Inject(testenv.Fault{Kind: testenv.FaultRateLimited, Path: testenv.PathNewOrder, RetryAfter: time.Hour,
		Detail: "too many new orders (300) from this account recently"})
	newOrders := func() int { return proxy.Faulted(testenv.FaultRateLimited) + len(proxy.Orders()) }
	s.request(t, "first.example.test")
	f := s.failure(t, "first.example.test")
	wait := f.NextAttempt.Sub(s.clock.Now())
	if !strings.Contains(f.LastError, "rate-limited") || wait < 59*time.Minute || wait > 61*time.Minute || f.Attempts != 0 {
		t.Fatalf("after rateLimited: %+v (next attempt in %s); want deferred for the Retry-After of 1 h", f, wait)
	}
	// The account is parked: another name does not reach the CA.
	s.request(t, "second.example.test")
	if n := newOrders(); n != 1 {
		t.Errorf("%d new orders reached the CA while parked, want 1", n)
	}
	if f := s.failure(t, "second.example.test"); !strings.Contains(f.LastError, "rate-limited orders") {
		t.Errorf("second name: %+v, want deferred by the parked account", f)
	}
	// After the Retry-After the names are ordered again.
	proxy.ClearFaults()
	s.clock.Add(time.Hour + time.Minute)
	s.request(t, "second.example.test")
	if !s.hasCert("second.example.test") || newOrders() != 2 {
		t.Errorf("after Retry-After: certificate %v, %d new orders", s.hasCert("second.example.test"), newOrders())
	}
}
