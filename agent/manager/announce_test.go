package manager

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
)

// TestAnnouncerPublishesAndBeats: Run publishes the agent's rules (the ask
// URL as "*") and keeps the heartbeat until its context ends.
func TestAnnouncerPublishesAndBeats(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	allow, err := policy.ParsePolicy([]string{"*.example.test", "shop.example.org", "*"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		NewAnnouncer(AnnouncerConfig{Store: st, Static: allow, Ask: true, Name: "a1", Interval: 100 * time.Millisecond}).Run(ctx)
		close(done)
	}()
	waitFor(t, "the rules published", func() bool {
		rec, err := st.Rules(context.Background())
		return err == nil && rec.Published
	})
	rec, _ := st.Rules(context.Background())
	if want := []string{"*", "*.example.test", "shop.example.org"}; !slices.Equal(rec.Static, want) || !slices.Equal(rec.Ask, []string{"*"}) {
		t.Errorf("published %+v, want static %v and ask *", rec, want)
	}
	d, err := st.AliveFor(context.Background())
	if err != nil || d > 300*time.Millisecond {
		t.Errorf("heartbeat counts for %v (%v), want up to three intervals", d, err)
	}
	// The beat read above has run out by firstOut: a heartbeat counting after
	// it is a later beat. Polled, so that a loaded machine delaying a beat
	// past its TTL does not fail the test; a stopped beat still does.
	firstOut := time.Now().Add(d)
	waitFor(t, "a heartbeat beaten after the first one ran out", func() bool {
		if !time.Now().After(firstOut) { // read only once the first beat is gone
			return false
		}
		d, err := st.AliveFor(context.Background())
		return err == nil && d > 0
	})
	cancel()
	<-done
	if d, _ := st.AliveFor(context.Background()); d > 300*time.Millisecond {
		t.Errorf("the heartbeat counts for %v after the announcer stopped, want at most three intervals", d)
	}
	waitFor(t, "the heartbeat to run out after the announcer stopped", func() bool {
		d, err := st.AliveFor(context.Background())
		return err == nil && d == 0
	})
}

// TestAnnouncerKeepsItsRulesInTheUnion: two agents with different rules
// publish the union; once one stops, the other's beats drop its rules after
// Forget, and a restart of the stopped one brings them back.
func TestAnnouncerKeepsItsRulesInTheUnion(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	// Long enough that the check within it stays meaningful under load.
	const forget = 2 * time.Second
	run := func(name string, rules ...string) (stop func()) {
		allow, err := policy.ParsePolicy(rules)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			_ = NewAnnouncer(AnnouncerConfig{Store: st, Static: allow, Name: name, Interval: 20 * time.Millisecond,
				Forget: forget, Logger: quietLogger()}).Run(ctx)
			close(done)
		}()
		return func() { cancel(); <-done }
	}
	static := func(want ...string) func() bool {
		return func() bool {
			rec, err := st.Rules(context.Background())
			return err == nil && slices.Equal(rec.Static, want)
		}
	}
	stopA := run("a", "*.a.test")
	defer stopA()
	stopB := run("b", "*.b.test")
	waitFor(t, "the union of both agents' rules", static("*.a.test", "*.b.test"))
	stopB()
	stopped := time.Now()              // b's last beat came before
	time.Sleep(100 * time.Millisecond) // a's beats (every 20 ms) run meanwhile
	// A read that ends within the bound must see b's rules; on a machine so
	// loaded that it ends later, their absence is no fault.
	if !static("*.a.test", "*.b.test")() && time.Since(stopped) < forget {
		t.Fatal("b's rules left the union before the bound")
	}
	waitFor(t, "b's rules gone from the union", static("*.a.test"))
	stopB = run("b", "*.b.test")
	defer stopB()
	waitFor(t, "b's rules back in the union", static("*.a.test", "*.b.test"))
}

// TestAnnouncerPublishesAgainAfterRedisLostTheRules: a Redis restarted
// without persistence (here FLUSHALL) loses the published rules; the running
// announcer publishes them again at its next beat, so nginx goes on judging
// names locally without waiting for an agent's restart.
func TestAnnouncerPublishesAgainAfterRedisLostTheRules(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	allow, err := policy.ParsePolicy([]string{"*.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	go func() {
		NewAnnouncer(AnnouncerConfig{Store: st, Static: allow, Name: "a1", Interval: 50 * time.Millisecond}).Run(ctx)
		close(done)
	}()
	published := func() bool {
		rec, err := st.Rules(context.Background())
		return err == nil && rec.Published && slices.Equal(rec.Static, []string{"*.example.test"})
	}
	waitFor(t, "the rules published", published)
	if err := r.Client.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rules published again after Redis lost them", published)
}
