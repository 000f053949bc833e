package store

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestPublishedRulesFollowTheAllowlist: nothing is published until an agent
// publishes; from then on every allowlist change publishes a new version
// holding the whole list, announced in the stream of changes.
func TestPublishedRulesFollowTheAllowlist(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()

	if _, err := st.AddAllowRules(ctx, "early.example"); err != nil {
		t.Fatal(err)
	}
	rec, err := st.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Published || rec.Version != 0 {
		t.Fatalf("before any agent published: %+v, want nothing", rec)
	}
	if n := r.Client.XLen(ctx, st.Keys().Changes()).Val(); n != 0 {
		t.Fatalf("an unpublished allowlist change announced %d changes, want 0", n)
	}

	v1, err := st.PublishRules(ctx, PublishedRules{Agent: "a1", Static: []string{"*.static.example", "one.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if v1 <= 0 {
		t.Fatalf("first publication: version %d; want a version", v1)
	}
	rec, _ = st.Rules(ctx)
	want := RulesRecord{Version: v1, Published: true, Static: []string{"*.static.example", "one.example"},
		Allow: []string{"early.example"}}
	if !equalRecords(rec, want) {
		t.Fatalf("published %+v, want %+v", rec, want)
	}

	if _, err := st.AddAllowRules(ctx, "*.added.example", "b.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RemoveAllowRules(ctx, "early.example"); err != nil {
		t.Fatal(err)
	}
	rec, _ = st.Rules(ctx)
	want.Version, want.Allow = v1+2, []string{"*.added.example", "b.example"}
	if !equalRecords(rec, want) {
		t.Fatalf("after the allowlist changes: %+v, want %+v", rec, want)
	}

	entries := r.Client.XRange(ctx, st.Keys().Changes(), "-", "+").Val()
	var versions []string
	for _, e := range entries {
		if e.Values["op"] != "rules" {
			t.Errorf("changes entry %v: want op rules", e.Values)
		}
		v, _ := e.Values["version"].(string)
		versions = append(versions, v)
	}
	if want := []string{strconv.FormatInt(v1, 10), strconv.FormatInt(v1+1, 10), strconv.FormatInt(v1+2, 10)}; !slices.Equal(versions, want) {
		t.Errorf("announced versions %v, want %v", versions, want)
	}

	// A second agent publishes only the ask URL's reach: the first
	// agent's rules stay, and the ask URL joins them.
	v4, err := st.PublishRules(ctx, PublishedRules{Agent: "a2", Static: nil, Ask: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	if v4 != v1+3 {
		t.Errorf("second publication: version %d, want %d", v4, v1+3)
	}
	rec, _ = st.Rules(ctx)
	if !rec.Published || !slices.Equal(rec.Static, []string{"*.static.example", "one.example"}) || !slices.Equal(rec.Ask, []string{"*"}) {
		t.Errorf("after the second publication: %+v", rec)
	}
}

func equalRecords(a, b RulesRecord) bool {
	return a.Version == b.Version && a.Published == b.Published && slices.Equal(a.Static, b.Static) &&
		slices.Equal(a.Allow, b.Allow) && slices.Equal(a.Ask, b.Ask)
}

// TestHeartbeat: a beat counts for its TTL, whichever agent made it, and
// reports whether the beating agent's own rules are published.
func TestHeartbeat(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	if d, err := st.AliveFor(ctx); err != nil || d != 0 {
		t.Fatalf("no beat yet: %v, %v; want 0", d, err)
	}
	if published, err := st.Beat(ctx, "agent-a", 3*time.Second, time.Minute); err != nil || published {
		t.Fatalf("a beat before any publication: %v, %v; want the rules reported unpublished", published, err)
	}
	if d, err := st.AliveFor(ctx); err != nil || d <= 2*time.Second || d > 3*time.Second {
		t.Fatalf("after a 3 s beat: %v, %v", d, err)
	}
	if _, err := st.PublishRules(ctx, PublishedRules{Agent: "agent-b", Static: []string{"*.example.test"}}); err != nil {
		t.Fatal(err)
	}
	if published, err := st.Beat(ctx, "agent-a", 3*time.Second, time.Minute); err != nil || published {
		t.Fatalf("a beat of an agent that did not publish: %v, %v; want its rules reported unpublished", published, err)
	}
	if published, err := st.Beat(ctx, "agent-b", 100*time.Millisecond, time.Minute); err != nil || !published {
		t.Fatalf("a beat after a publication: %v, %v; want the rules reported published", published, err)
	}
	time.Sleep(200 * time.Millisecond)
	if d, err := st.AliveFor(ctx); err != nil || d != 0 {
		t.Fatalf("after the last beat expired: %v, %v; want 0", d, err)
	}
}

// TestRulesVersionNeverGoesBackwards: nginx reads the record again only for
// a version above the one it judges by, so a publication after Redis lost
// the record (a restart without persistence) must still get a higher
// version than any before.
func TestRulesVersionNeverGoesBackwards(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	var last int64
	for i := 0; i < 3; i++ {
		v, err := st.PublishRules(ctx, PublishedRules{Agent: "a1", Static: []string{"*.old.example"}})
		if err != nil {
			t.Fatal(err)
		}
		last = v
	}
	if err := r.Client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	v, err := st.PublishRules(ctx, PublishedRules{Agent: "a1", Static: []string{"*.new.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if v <= last {
		t.Fatalf("a publication after Redis lost the record got version %d, want above %d", v, last)
	}
	if rec, _ := st.Rules(ctx); rec.Version != v {
		t.Fatalf("the record holds version %d, want %d", rec.Version, v)
	}
	next, err := st.PublishRules(ctx, PublishedRules{Agent: "a1", Static: []string{"*.new.example"}})
	if err != nil || next != v+1 {
		t.Fatalf("the next publication: version %d (%v), want %d", next, err, v+1)
	}
}

// TestPublishedRulesAreTheUnionOfTheLiveAgents: agents running with
// different rules publish the union, so nginx refuses locally no name one of
// them would issue; an agent restarting with new rules replaces only its own
// entry; an agent that stops beating leaves the union once the bound has
// passed, in a new version.
func TestPublishedRulesAreTheUnionOfTheLiveAgents(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const forget = 300 * time.Millisecond
	publish := func(agent string, ask []string, static ...string) int64 {
		t.Helper()
		v, err := st.PublishRules(ctx, PublishedRules{Agent: agent, Static: static, Ask: ask})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	expect := func(when string, static, ask []string) RulesRecord {
		t.Helper()
		rec, err := st.Rules(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.Published || !slices.Equal(rec.Static, static) || !slices.Equal(rec.Ask, ask) {
			t.Fatalf("%s: published %+v, want static %v and ask %v", when, rec, static, ask)
		}
		return rec
	}

	publish("a", nil, "*.a.test", "shared.test")
	publish("b", []string{"*"}, "*.b.test", "shared.test")
	expect("two agents published", []string{"*.a.test", "*.b.test", "shared.test"}, []string{"*"})

	// a restarts with other rules: b's entry stays.
	publish("a", nil, "*.a2.test")
	rec := expect("a restarted with new rules", []string{"*.a2.test", "*.b.test", "shared.test"}, []string{"*"})

	// Both beat within the bound: nothing is forgotten, no new version.
	for _, agent := range []string{"a", "b"} {
		if mine, err := st.Beat(ctx, agent, time.Second, forget); err != nil || !mine {
			t.Fatalf("beat of %s: %v, %v; want its entry reported there", agent, mine, err)
		}
	}
	if again := expect("both beat", rec.Static, rec.Ask); again.Version != rec.Version {
		t.Fatalf("beats that forgot nobody moved the version from %d to %d", rec.Version, again.Version)
	}

	// b stops beating; a beats on past the bound: b's rules and ask URL
	// leave the union, in a new version announced in the stream.
	deadline := time.Now().Add(2 * forget)
	for time.Now().Before(deadline) {
		if mine, err := st.Beat(ctx, "a", time.Second, forget); err != nil || !mine {
			t.Fatalf("beat of a: %v, %v", mine, err)
		}
		time.Sleep(forget / 10)
	}
	after := expect("b stopped beating", []string{"*.a2.test"}, nil)
	if after.Version <= rec.Version {
		t.Fatalf("forgetting b kept version %d, want above %d", after.Version, rec.Version)
	}
	last := r.Client.XRevRangeN(ctx, st.Keys().Changes(), "+", "-", 1).Val()
	if len(last) != 1 || last[0].Values["version"] != strconv.FormatInt(after.Version, 10) {
		t.Fatalf("last change %v, want the announcement of version %d", last, after.Version)
	}
	if fields := r.Client.HKeys(ctx, st.Keys().Rules()).Val(); slices.ContainsFunc(fields, func(f string) bool {
		return f == "static:b" || f == "ask:b" || f == "seen:b"
	}) {
		t.Fatalf("b's entry left in the record: %v", fields)
	}

	// b comes back: its beat says its entry is gone, so it publishes again.
	if mine, err := st.Beat(ctx, "b", time.Second, forget); err != nil || mine {
		t.Fatalf("beat of the forgotten b: %v, %v; want its entry reported gone", mine, err)
	}
	publish("b", nil, "*.b.test")
	expect("b published again", []string{"*.a2.test", "*.b.test"}, nil)
}
