package manager

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
)

func startConsumer(t *testing.T, m *Manager, st *store.Store, rules ...string) (stop func()) {
	t.Helper()
	allow, err := policy.ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	c := NewConsumer(ConsumerConfig{
		Store: st, Manager: m, Policy: allow, Name: "test-agent",
		Block: 100 * time.Millisecond, ShutdownGrace: 5 * time.Second, Logger: quietLogger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("consumer: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the consumer did not stop within 30 s of shutdown")
		}
	}
}

func request(t *testing.T, r *redis.Client, st *store.Store, name string) {
	t.Helper()
	if err := r.XAdd(context.Background(), &redis.XAddArgs{
		Stream: st.Keys().Requests(), Values: []any{"name", name, "node", "n1"},
	}).Err(); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 20*time.Second, what, cond)
}

func pendingCount(t *testing.T, r *redis.Client, st *store.Store) int64 {
	t.Helper()
	p, err := r.XPending(context.Background(), st.Keys().Requests(), "certagent").Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

func TestConsumerIssuesAllowedNamesOnce(t *testing.T) {
	issuer := &fakeIssuer{delay: 200 * time.Millisecond}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	// Recorded before any agent ran: still handled.
	request(t, r.Client, st, "early.example.com")
	stop := startConsumer(t, m, st, "*.example.com")
	defer stop()
	for range 5 {
		request(t, r.Client, st, "dup.example.com")
	}
	request(t, r.Client, st, "Mixed.Example.COM.")
	request(t, r.Client, st, "denied.example.org")
	request(t, r.Client, st, "bad_name.example.com")
	request(t, r.Client, st, "")

	for _, name := range []string{"early.example.com", "dup.example.com", "mixed.example.com"} {
		waitFor(t, "a certificate for "+name, func() bool {
			_, err := st.GetCert(ctx, name)
			return err == nil
		})
	}
	waitFor(t, "every entry acknowledged", func() bool { return pendingCount(t, r.Client, st) == 0 })
	if got := issuer.orders.Load(); got != 3 {
		t.Errorf("%d orders (%v), want 3: one per allowed name, none for duplicates", got, issuer.ordered)
	}
	for _, name := range []string{"denied.example.org", "bad_name.example.com"} {
		if _, err := st.GetCert(ctx, name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: %v, want nothing stored", name, err)
		}
	}
}

func TestConsumerSurvivesRedisRestart(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, r := newTestManager(t, issuer)
	stop := startConsumer(t, m, st, "*.example.com")
	defer stop()
	request(t, r.Client, st, "before.example.com")
	waitFor(t, "the first certificate", func() bool {
		_, err := st.GetCert(context.Background(), "before.example.com")
		return err == nil
	})
	// Without persistence the restarted Redis has no stream and no group:
	// the consumer must recreate them.
	r.Stop()
	time.Sleep(300 * time.Millisecond)
	r.Start()
	request(t, r.Client, st, "after.example.com")
	waitFor(t, "a certificate after the restart", func() bool {
		_, err := st.GetCert(context.Background(), "after.example.com")
		return err == nil
	})
}

func TestConsumerShutdownLeavesCutOrdersPending(t *testing.T) {
	issuer := &fakeIssuer{delay: time.Hour}
	m, st, r := newTestManager(t, issuer)
	allow, _ := policy.ParsePolicy([]string{"*.example.com"})
	c := NewConsumer(ConsumerConfig{
		Store: st, Manager: m, Policy: allow, Name: "test-agent",
		Block: 100 * time.Millisecond, ShutdownGrace: 200 * time.Millisecond, Logger: quietLogger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	request(t, r.Client, st, "slow.example.com")
	waitFor(t, "the order to start", func() bool { return issuer.orders.Load() == 1 })
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("shutdown did not end the in-flight order after the grace period")
	}
	if n := pendingCount(t, r.Client, st); n != 1 {
		t.Errorf("%d entries pending after a cut order, want 1 (resumed at next start)", n)
	}
	if n := r.Client.Exists(context.Background(), st.Keys().Lock("slow.example.com")).Val(); n != 0 {
		t.Error("the cut order kept its lease")
	}

	// The next start with the same name resumes the pending entry.
	issuer.delay = 0
	stop := startConsumer(t, m, st, "*.example.com")
	defer stop()
	waitFor(t, "the resumed order", func() bool {
		_, err := st.GetCert(context.Background(), "slow.example.com")
		return err == nil
	})
}

// TestConsumerMarksWhatNginxMayWaitFor: the issuing mark is "issuing" while
// the order runs, gone once the certificate is stored, and "refused" for a
// name the policy refuses or whose order failed.
func TestConsumerMarksWhatNginxMayWaitFor(t *testing.T) {
	issuer := &fakeIssuer{delay: 500 * time.Millisecond}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	stop := startConsumer(t, m, st, "*.example.com")
	defer stop()

	request(t, r.Client, st, "wait.example.com")
	waitFor(t, "the issuing mark during the order", func() bool {
		state, _, _ := st.IssuingMark(ctx, "wait.example.com")
		return state == store.Issuing
	})
	if _, err := st.GetCert(ctx, "wait.example.com"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the mark came after the certificate: %v", err)
	}
	waitFor(t, "the mark cleared after issuance", func() bool {
		state, _, _ := st.IssuingMark(ctx, "wait.example.com")
		_, err := st.GetCert(ctx, "wait.example.com")
		return state == "" && err == nil
	})

	request(t, r.Client, st, "other.example.net")
	waitFor(t, "a refused mark for a name outside the policy", func() bool {
		state, reason, _ := st.IssuingMark(ctx, "other.example.net")
		return state == store.Refused && reason != ""
	})

	issuer.fail = errors.New("the CA said no")
	request(t, r.Client, st, "fails.example.com")
	waitFor(t, "a refused mark after a failed order", func() bool {
		state, reason, _ := st.IssuingMark(ctx, "fails.example.com")
		return state == store.Refused && strings.Contains(reason, "the CA said no")
	})
}

// blockingIssuer holds every order until its context ends.
type blockingIssuer struct{ started, cancelled chan string }

func (b *blockingIssuer) DirectoryURL() string { return "https://blocking-ca/dir" }

func (b *blockingIssuer) Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error) {
	b.started <- names[0]
	<-ctx.Done()
	b.cancelled <- names[0]
	return nil, ctx.Err()
}

// The shutdown grace counts from the end of the consumer's context (the
// signal), not from the end of the stream read that was blocked then: the
// in-flight order is cancelled while that read still blocks in Redis.
func TestConsumerGraceCountsFromTheSignal(t *testing.T) {
	issuer := &blockingIssuer{started: make(chan string, 1), cancelled: make(chan string, 1)}
	m, st, r := newTestManager(t, issuer)
	allow, _ := policy.ParsePolicy([]string{"*.example.com"})
	c := NewConsumer(ConsumerConfig{
		Store: st, Manager: m, Policy: allow, Name: "test-agent", Workers: 1,
		Block: 10 * time.Second, ShutdownGrace: 300 * time.Millisecond, Logger: quietLogger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	request(t, r.Client, st, "held.example.com")
	select {
	case <-issuer.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the order did not start")
	}
	readBlocked := func() bool {
		clients, err := r.Client.ClientList(context.Background()).Result()
		for _, line := range strings.Split(clients, "\n") {
			if err == nil && strings.Contains(line, " flags=b ") && strings.Contains(line, " cmd=xreadgroup ") {
				return true
			}
		}
		return false
	}
	waitFor(t, "the next stream read blocking", readBlocked)
	cancel()
	select {
	case <-issuer.cancelled:
	case <-time.After(40 * time.Second):
		t.Fatal("the in-flight order was never cancelled")
	}
	if !readBlocked() {
		t.Error("the order was cancelled only after the blocked read returned: the grace did not count from the signal")
	}
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		t.Fatal("the consumer did not stop")
	}
}

// On shutdown an order still waiting for a free slot (Concurrency) does not
// start: the grace is for the orders running at the signal. Its entry stays
// pending for the next start, without a failure recorded for the name.
func TestConsumerShutdownStartsNoWaitingOrder(t *testing.T) {
	issuer := &fakeIssuer{delay: time.Second}
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	m := New(Config{Store: st, Issuer: issuer, Logger: quietLogger(),
		Concurrency: NewConcurrency(ConcurrencyConfig{Fixed: 1, Logger: quietLogger()})})
	allow, _ := policy.ParsePolicy([]string{"*.example.com"})
	c := NewConsumer(ConsumerConfig{
		Store: st, Manager: m, Policy: allow, Name: "test-agent", Workers: 2,
		Block: 100 * time.Millisecond, ShutdownGrace: 10 * time.Second, Logger: quietLogger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	request(t, r.Client, st, "first.example.com")
	request(t, r.Client, st, "second.example.com")
	waitFor(t, "one order running and one waiting for its slot", func() bool {
		return issuer.orders.Load() == 1 && pendingCount(t, r.Client, st) == 2
	})
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("shutdown did not end")
	}
	if n := issuer.orders.Load(); n != 1 {
		t.Errorf("%d orders after shutdown, want 1: an order waiting for a slot started during the grace", n)
	}
	if n := pendingCount(t, r.Client, st); n != 1 {
		t.Errorf("%d entries pending after shutdown, want 1 (the name that waited)", n)
	}
	bg := context.Background()
	for _, name := range []string{"first.example.com", "second.example.com"} {
		if f, err := st.GetFailure(bg, name); err == nil && f != nil {
			t.Errorf("a failure recorded for %s: %+v", name, f)
		}
	}
}
