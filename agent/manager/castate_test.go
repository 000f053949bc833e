package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// caOutage takes the CA away through the proxy (refusing, or accepting and
// never answering) and gives it back.
type caOutage struct {
	name string
	set  func(p *testenv.CAProxy, down bool)
}

var caOutages = []caOutage{
	{"refusing", func(p *testenv.CAProxy, down bool) { p.SetDown(down) }},
	{"hanging", func(p *testenv.CAProxy, down bool) { p.SetHanging(down) }},
}

// Names requested while the CA is down wait for it, marked so nginx does
// not hold their handshakes, without a failure record; once the CA answers
// its probe they are all issued, with no new request for them.
func TestNamesRequestedWhileTheCAIsDownAreIssuedWhenItReturns(t *testing.T) {
	s := startCAStack(t)
	proxy := testenv.StartCAProxy(t, s.pebble)
	m := s.manager(t, proxy.DirectoryURL, proxy.CARootsFile)
	allow, _ := policy.ParsePolicy([]string{"*.example.test"})
	s.consume(t, ConsumerConfig{Manager: m, Policy: allow, CAWatch: 100 * time.Millisecond,
		RetryFirst: time.Hour})
	ctx := context.Background()
	s.request(t, "before.example.test")
	if !s.hasCert("before.example.test") {
		t.Fatal("no certificate before the outage")
	}

	for _, outage := range caOutages {
		names := make([]string, 5)
		for i := range names {
			names[i] = fmt.Sprintf("%s-%d.example.test", outage.name, i)
		}
		outage.set(proxy, true)
		for _, n := range names {
			request(t, s.redis.Client, s.st, n)
		}
		// A hanging CA is noticed when the first request's timeout runs out.
		deadline := time.Now().Add(60 * time.Second)
		for _, n := range names {
			for {
				state, reason, err := s.st.IssuingMark(ctx, n)
				if err == nil && state == store.Refused && strings.HasPrefix(reason, "deferred: CA ") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s CA: %s not marked as waiting for the CA: %q %q %v", outage.name, n, state, reason, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		down, err := s.st.CADown(ctx, proxy.DirectoryURL)
		if err != nil || down == nil {
			t.Fatalf("%s CA: no record of the outage: %v", outage.name, err)
		}
		t.Logf("%s CA: %s", outage.name, down.Reason)
		for _, n := range names {
			if f, err := s.st.GetFailure(ctx, n); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s CA: %s has a failure record: %+v %v", outage.name, n, f, err)
			}
		}

		outage.set(proxy, false)
		returned := time.Now()
		waitFor(t, "every name issued after the CA returned", func() bool {
			for _, n := range names {
				if !s.hasCert(n) {
					return false
				}
			}
			return true
		})
		t.Logf("%s CA: %d names issued %s after it answered again", outage.name, len(names), time.Since(returned).Round(10*time.Millisecond))
		if down, _ := s.st.CADown(ctx, proxy.DirectoryURL); down != nil {
			t.Errorf("%s CA: still recorded as down: %+v", outage.name, down)
		}
		if waiting, _ := s.st.WaitingForCA(ctx, 100); len(waiting) != 0 {
			t.Errorf("%s CA: names still waiting: %v", outage.name, waiting)
		}
		if failures, _ := s.st.ListFailures(ctx, 0); len(failures) != 0 {
			t.Errorf("%s CA: failure records left: %+v", outage.name, failures)
		}
	}
	// The order that found each CA down reported it deferred, and no order
	// reported a failure: the outage is not the names'.
	deferred := 0
	for _, e := range s.events.all() {
		switch e.Type {
		case telemetry.EventFailed:
			t.Errorf("a failed order reported during the outage: %+v", e)
		case telemetry.EventDeferred:
			deferred++
		}
	}
	if deferred < len(caOutages) {
		t.Errorf("%d orders reported deferred, want one at least for each of the %d outages", deferred, len(caOutages))
	}
}

// A Redis that refuses writes (out of memory under noeviction) while the
// consumer takes a name's lease leaves the entry pending, without a failure
// record; the name is issued once Redis takes writes again, with no new
// request for it.
func TestRedisFailureTakingTheLeaseLeavesTheNameQueued(t *testing.T) {
	s := startCAStack(t)
	m := s.manager(t, s.pebble.DirectoryURL, s.pebble.CARootsFile)
	ctx := context.Background()
	rdb := s.redis.Client
	const name = "oom.example.test"
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "maxmemory", "0") })
	allow, _ := policy.ParsePolicy([]string{"*.example.test"})
	s.consume(t, ConsumerConfig{Manager: m, Policy: allow})
	waitFor(t, "the consumer reading", func() bool {
		consumers, err := rdb.XInfoConsumers(ctx, s.st.Keys().Requests(), "certagent").Result()
		return err == nil && len(consumers) == 1
	})
	// The request and the memory limit in one transaction: the consumer
	// reads the entry (XREADGROUP works out of memory) with Redis already
	// refusing writes, the lease among them.
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.XAdd(ctx, &redis.XAddArgs{Stream: s.st.Keys().Requests(), Values: []any{"name", name, "node", "n1"}})
		p.ConfigSet(ctx, "maxmemory", "1")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.st.AcquireLock(ctx, "probe.example.test", time.Second); !store.Unavailable(err) {
		t.Fatalf("taking a lease out of memory: %v; the test cannot play the failure", err)
	}
	waitFor(t, "the entry delivered while Redis refuses writes", func() bool {
		p, err := rdb.XPending(ctx, s.st.Keys().Requests(), "certagent").Result()
		return err == nil && p.Count == 1
	})
	time.Sleep(2 * time.Second) // a few retries while Redis still refuses
	if p, err := rdb.XPending(ctx, s.st.Keys().Requests(), "certagent").Result(); err != nil || p.Count != 1 {
		t.Fatalf("the entry was acknowledged while Redis refused writes: %+v %v", p, err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the name issued after Redis recovered", func() bool { return s.hasCert(name) })
	if f, err := s.st.GetFailure(ctx, name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a failure record for a Redis failure: %+v %v", f, err)
	}
	waitFor(t, "the entry acknowledged", func() bool {
		p, err := rdb.XPending(ctx, s.st.Keys().Requests(), "certagent").Result()
		return err == nil && p.Count == 0
	})
}

// With the first CA down, orders go to the fallback CA without failing
// names; once the probe finds the first CA back, it takes the orders again.
func TestFallbackCATakesOverWhileTheFirstIsDown(t *testing.T) {
	s := startCAStack(t)
	proxy := testenv.StartCAProxy(t, s.pebble)
	lazy := func(dir, roots string) *acmeclient.Lazy {
		return acmeclient.NewLazy(acmeclient.Config{DirectoryURL: dir, Email: "ops@example.test", CARootFiles: []string{roots}},
			s.st, acmeclient.NewHTTP01Provider(s.st, 0))
	}
	m := New(Config{Store: s.st, Issuer: lazy(proxy.DirectoryURL, proxy.CARootsFile),
		Fallbacks: []Issuer{lazy(s.pebble.DirectoryURL, s.pebble.CARootsFile)}, Logger: quietLogger(), Clock: s.clock})
	allow, _ := policy.ParsePolicy([]string{"*.example.test"})
	s.consume(t, ConsumerConfig{Manager: m, Policy: allow, CAWatch: 100 * time.Millisecond})
	ctx := context.Background()
	issuedBy := func(name string) string {
		rec, err := s.st.GetCert(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return rec.CA
	}

	proxy.SetDown(true)
	for _, n := range []string{"fb-1.example.test", "fb-2.example.test", "fb-3.example.test"} {
		s.request(t, n)
		if ca := issuedBy(n); ca != s.pebble.DirectoryURL {
			t.Errorf("%s issued by %s, want the fallback %s", n, ca, s.pebble.DirectoryURL)
		}
	}
	if down, err := s.st.CADown(ctx, proxy.DirectoryURL); err != nil || down == nil {
		t.Errorf("the first CA is not recorded down: %v", err)
	}
	if failures, _ := s.st.ListFailures(ctx, 0); len(failures) != 0 {
		t.Errorf("failure records: %+v", failures)
	}

	proxy.SetDown(false)
	waitFor(t, "the probe to find the first CA back", func() bool {
		down, err := s.st.CADown(ctx, proxy.DirectoryURL)
		return err == nil && down == nil
	})
	s.request(t, "back.example.test")
	if ca := issuedBy("back.example.test"); ca != proxy.DirectoryURL {
		t.Errorf("after the first CA returned, issued by %s, want %s", ca, proxy.DirectoryURL)
	}
}

// A name that starts waiting after the CA watch saw the CA answer and went
// quiet (its order read the CA as down just before the probe cleared it) is
// resumed by the watch it wakes, not left until the next reclaim.
func TestANameThatWaitsAfterTheCAReturnedIsResumed(t *testing.T) {
	m, st, _ := newTestManager(t, &fakeIssuer{})
	c := NewConsumer(ConsumerConfig{Store: st, Manager: m, Name: "agent-1", Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		m.WatchCAs(ctx, 20*time.Millisecond)
	}()
	defer func() { cancel(); <-watching }()
	// The watch's first look finds nothing down and no name waiting.
	time.Sleep(300 * time.Millisecond)

	const name = "late.example.test"
	outage := &acmeclient.OutageError{Reason: "CA unreachable: connection refused at https://fake-ca/dir"}
	if ack := c.waitForCA(ctx, quietLogger(), store.Request{ID: "1-1", Name: name, Node: "node-1"}, name, outage); !ack {
		t.Fatal("the name was not kept until the CA answers")
	}
	waitFor(t, "the waiting name queued again", func() bool {
		n, err := st.CountWaitingForCA(ctx)
		return err == nil && n == 0
	})
}
