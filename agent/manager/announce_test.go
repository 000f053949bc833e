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
	if d, err := st.AliveFor(context.Background()); err != nil || d <= 0 || d > 300*time.Millisecond {
		t.Errorf("heartbeat counts for %v (%v), want up to three intervals", d, err)
	}
	time.Sleep(400 * time.Millisecond) // past one beat's TTL: only new beats keep it
	if d, _ := st.AliveFor(context.Background()); d <= 0 {
		t.Error("the heartbeat ran out while the announcer ran")
	}
	cancel()
	<-done
	time.Sleep(400 * time.Millisecond)
	if d, _ := st.AliveFor(context.Background()); d != 0 {
		t.Errorf("the heartbeat counts for %v after the announcer stopped, want it run out", d)
	}
}

// TestAnnouncerKeepsItsRulesInTheUnion: two agents with different rules
// publish the union; once one stops, the other's beats drop its rules after
// Forget, and a restart of the stopped one brings them back.
func TestAnnouncerKeepsItsRulesInTheUnion(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	run := func(name string, rules ...string) (stop func()) {
		allow, err := policy.ParsePolicy(rules)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			_ = NewAnnouncer(AnnouncerConfig{Store: st, Static: allow, Name: name, Interval: 20 * time.Millisecond,
				Forget: 300 * time.Millisecond, Logger: quietLogger()}).Run(ctx)
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
	time.Sleep(100 * time.Millisecond)
	if !static("*.a.test", "*.b.test")() {
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
