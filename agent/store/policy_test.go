package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestAllowlistAndNegativeCache(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, _ := schemadoc.Load()
	if n, err := st.AddAllowRules(ctx, "shop.example.com", "*.example.org"); err != nil || n != 2 {
		t.Fatalf("AddAllowRules = %d, %v", n, err)
	}
	for name, want := range map[string]bool{
		"shop.example.com": true, "www.example.com": false, "a.b.example.org": true, "example.org": false,
	} {
		if got, err := st.AllowlistAllows(ctx, name); err != nil || got != want {
			t.Errorf("AllowlistAllows(%s) = %v, %v; want %v", name, got, err, want)
		}
	}
	key, _ := doc["allow"].Key("t:")
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["allow"].Type {
		t.Errorf("%s is a %s, the document says %s", key, typ, doc["allow"].Type)
	}

	if err := st.Deny(ctx, "www.example.com", "no allow rule", time.Minute); err != nil {
		t.Fatal(err)
	}
	d, err := st.Denied(ctx, "www.example.com")
	if err != nil || d == nil || d.Reason != "no allow rule" {
		t.Fatalf("Denied = %+v, %v", d, err)
	}
	deniedKey, _ := doc["denied"].Key("t:", "name", "www.example.com")
	if ttl := r.Client.TTL(ctx, deniedKey).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("denial TTL %s", ttl)
	}
	// Any allowlist change voids every cached denial at once.
	if _, err := st.AddAllowRules(ctx, "*.example.com"); err != nil {
		t.Fatal(err)
	}
	if d, err := st.Denied(ctx, "www.example.com"); err != nil || d != nil {
		t.Errorf("denial survived an allowlist change: %+v, %v", d, err)
	}
	if n, err := st.RemoveAllowRules(ctx, "*.example.com", "never.example.com"); err != nil || n != 1 {
		t.Errorf("RemoveAllowRules = %d, %v", n, err)
	}
	rules, err := st.AllowRules(ctx)
	if err != nil || strings.Join(rules, ",") != "*.example.org,shop.example.com" {
		t.Errorf("AllowRules = %v, %v", rules, err)
	}
	if ok, _ := st.AskAllowed(ctx, "x.example.net"); ok {
		t.Error("no ask answer cached yet")
	}
	if err := st.CacheAskAllowed(ctx, "x.example.net", time.Minute); err != nil {
		t.Fatal(err)
	}
	if ok, _ := st.AskAllowed(ctx, "x.example.net"); !ok {
		t.Error("the cached ask answer is not found")
	}
}

func TestFailureMemory(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0).UTC()
	delay := func(n int) time.Duration { return time.Duration(n) * time.Minute }
	if _, err := st.GetFailure(ctx, "a.example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("no record yet: %v", err)
	}
	for i := 1; i <= 3; i++ {
		f, err := st.RecordFailure(ctx, "a.example.com", "boom", now, delay)
		if err != nil {
			t.Fatal(err)
		}
		if f.Attempts != i || !f.NextAttempt.Equal(now.Add(time.Duration(i)*time.Minute)) {
			t.Errorf("attempt %d: %+v", i, f)
		}
	}
	// A deferral moves the next attempt without counting an attempt.
	if _, err := st.DeferName(ctx, "a.example.com", "budget spent", now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	f, err := st.GetFailure(ctx, "a.example.com")
	if err != nil || f.Attempts != 3 || f.LastError != "budget spent" || !f.NextAttempt.Equal(now.Add(time.Hour)) {
		t.Errorf("after deferral: %+v, %v", f, err)
	}
	if _, err := st.RecordFailure(ctx, "b.example.com", "other", now, delay); err != nil {
		t.Fatal(err)
	}
	list, err := st.ListFailures(ctx, 0)
	if err != nil || len(list) != 2 || list[0].Name != "b.example.com" || list[1].Name != "a.example.com" {
		t.Errorf("ListFailures = %+v, %v; want soonest next attempt first", list, err)
	}
	doc, _ := schemadoc.Load()
	for _, id := range []string{"failure", "failures"} {
		key, _ := doc[id].Key("t:", map[string][]string{"failure": {"name", "a.example.com"}}[id]...)
		if typ := r.Client.Type(ctx, key).Val(); typ != doc[id].Type {
			t.Errorf("%s is a %s, the document says %s", key, typ, doc[id].Type)
		}
	}
	if err := st.ClearFailure(ctx, "a.example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetFailure(ctx, "a.example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after clearing: %v", err)
	}
	// An expired record drops out of the index.
	r.Client.Del(ctx, st.Keys().Failure("b.example.com"))
	if list, err := st.ListFailures(ctx, 0); err != nil || len(list) != 0 {
		t.Errorf("ListFailures after expiry = %+v, %v", list, err)
	}
	if n := r.Client.ZCard(ctx, st.Keys().Failures()).Val(); n != 0 {
		t.Errorf("%d index entries left", n)
	}
}

func TestBudgetsAndParking(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	b := Budget{Kind: "orders", Subject: "acct", Limit: 3, Window: time.Hour}
	now := time.Unix(1_800_000_000, 0)
	member := func(i int) string { return "m" + string(rune('a'+i)) }
	// With one slot reserved, the lower priority gets two of three.
	for i := range 2 {
		if ok, _, err := st.TakeBudget(ctx, b, now.Add(time.Duration(i)*time.Minute), 1, member(i), true); err != nil || !ok {
			t.Fatalf("take %d: %v %v", i, ok, err)
		}
	}
	ok, free, err := st.TakeBudget(ctx, b, now.Add(2*time.Minute), 1, member(2), true)
	if err != nil || ok || !free.Equal(now.Add(time.Hour)) {
		t.Errorf("third take with one slot reserved: ok %v, free %s, %v; want refused until %s", ok, free, err, now.Add(time.Hour))
	}
	// The higher priority still gets the reserved slot, then nobody does.
	if ok, _, _ := st.TakeBudget(ctx, b, now.Add(2*time.Minute), 0, member(2), true); !ok {
		t.Error("the reserved slot was refused to the higher priority")
	}
	if ok, free, _ := st.TakeBudget(ctx, b, now.Add(3*time.Minute), 0, member(3), true); ok || !free.Equal(now.Add(time.Hour)) {
		t.Errorf("a fourth event fits a budget of three: ok %v free %s", ok, free)
	}
	// Returned events and the passing window free slots.
	if err := st.ReturnBudget(ctx, b, member(2)); err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := st.TakeBudget(ctx, b, now.Add(3*time.Minute), 0, member(3), false); !ok {
		t.Error("a returned event still counts")
	}
	if ok, _, _ := st.TakeBudget(ctx, b, now.Add(time.Hour+30*time.Second), 1, member(4), true); !ok {
		t.Error("the first event is out of the window and still counts")
	}
	doc, _ := schemadoc.Load()
	key, _ := doc["budget"].Key("t:", "kind", "orders", "subject", "acct")
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["budget"].Type {
		t.Errorf("%s is a %s, the document says %s", key, typ, doc["budget"].Type)
	}
	if err := st.NoteBudgetEvent(ctx, Budget{Kind: "failed", Subject: "x.example.com", Limit: 1, Window: time.Hour}, now, "f1"); err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := st.TakeBudget(ctx, Budget{Kind: "failed", Subject: "x.example.com", Limit: 1, Window: time.Hour}, now, 0, "", false); ok {
		t.Error("a noted failure does not count")
	}

	scopes := []Scope{{"orders", "acct"}, {"certs", "example.com"}}
	if until, _, err := st.ParkedUntil(ctx, now, scopes...); err != nil || !until.IsZero() {
		t.Errorf("nothing parked: %s %v", until, err)
	}
	real := time.Now()
	if err := st.Park(ctx, "certs", "example.com", real.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// A shorter Retry-After does not shorten the park.
	if err := st.Park(ctx, "certs", "example.com", real.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	until, which, err := st.ParkedUntil(ctx, real, scopes...)
	if err != nil || until.UnixMilli() != real.Add(10*time.Second).UnixMilli() || which != scopes[1] {
		t.Errorf("ParkedUntil = %s %v %v", until, which, err)
	}
	if until, _, _ := st.ParkedUntil(ctx, real.Add(11*time.Second), scopes...); !until.IsZero() {
		t.Errorf("still parked after its Retry-After: %s", until)
	}
}
