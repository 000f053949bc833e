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

	v1, before, err := st.PublishRules(ctx, PublishedRules{Static: []string{"*.static.example", "one.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if v1 <= 0 || len(before) != 0 {
		t.Fatalf("first publication: version %d, before %v; want a version and nothing", v1, before)
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

	// A second agent publishes the ask URL's reach; the first agent's
	// rules come back as what was published before.
	v4, before, err := st.PublishRules(ctx, PublishedRules{Static: nil, Ask: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	if v4 != v1+3 || !slices.Equal(before, []string{"*.static.example", "one.example"}) {
		t.Errorf("second publication: version %d, before %v", v4, before)
	}
	rec, _ = st.Rules(ctx)
	if !rec.Published || len(rec.Static) != 0 || !slices.Equal(rec.Ask, []string{"*"}) {
		t.Errorf("after the second publication: %+v", rec)
	}
}

func equalRecords(a, b RulesRecord) bool {
	return a.Version == b.Version && a.Published == b.Published && slices.Equal(a.Static, b.Static) &&
		slices.Equal(a.Allow, b.Allow) && slices.Equal(a.Ask, b.Ask)
}

// TestHeartbeat: a beat counts for its TTL, whichever agent made it.
func TestHeartbeat(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	if d, err := st.AliveFor(ctx); err != nil || d != 0 {
		t.Fatalf("no beat yet: %v, %v; want 0", d, err)
	}
	if published, err := st.Beat(ctx, "agent-a", 3*time.Second); err != nil || published {
		t.Fatalf("a beat before any publication: %v, %v; want the rules reported unpublished", published, err)
	}
	if d, err := st.AliveFor(ctx); err != nil || d <= 2*time.Second || d > 3*time.Second {
		t.Fatalf("after a 3 s beat: %v, %v", d, err)
	}
	if _, _, err := st.PublishRules(ctx, PublishedRules{Static: []string{"*.example.test"}}); err != nil {
		t.Fatal(err)
	}
	if published, err := st.Beat(ctx, "agent-b", 100*time.Millisecond); err != nil || !published {
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
		v, _, err := st.PublishRules(ctx, PublishedRules{Static: []string{"*.old.example"}})
		if err != nil {
			t.Fatal(err)
		}
		last = v
	}
	if err := r.Client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	v, _, err := st.PublishRules(ctx, PublishedRules{Static: []string{"*.new.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if v <= last {
		t.Fatalf("a publication after Redis lost the record got version %d, want above %d", v, last)
	}
	if rec, _ := st.Rules(ctx); rec.Version != v {
		t.Fatalf("the record holds version %d, want %d", rec.Version, v)
	}
	next, _, err := st.PublishRules(ctx, PublishedRules{Static: []string{"*.new.example"}})
	if err != nil || next != v+1 {
		t.Fatalf("the next publication: version %d (%v), want %d", next, err, v+1)
	}
}
