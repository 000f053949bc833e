package store

import (
	"context"
	"testing"
	"time"
)

// A held event whose order never finishes (its agent was killed) gives its
// slot back once the hold ends; a confirmed one stays for the whole window,
// and a returned one frees the slot at once.
func TestHeldBudgetSlotsComeBack(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	b := Budget{Kind: "certs", Subject: "example.com", Limit: 2, Window: 7 * 24 * time.Hour, Hold: 10 * time.Minute}
	now := time.Now()
	take := func(at time.Time, member string) bool {
		t.Helper()
		ok, _, err := st.TakeBudget(ctx, b, at, 0, member, true)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !take(now, "confirmed") || !take(now, "killed") {
		t.Fatal("two slots of two were not free")
	}
	if err := st.ConfirmBudget(ctx, b, "confirmed", now); err != nil {
		t.Fatal(err)
	}
	ok, free, err := st.TakeBudget(ctx, b, now.Add(time.Minute), 0, "third", true)
	if err != nil || ok {
		t.Fatalf("a third slot within the hold (%v): the killed order's slot came back too early", err)
	}
	if !free.Equal(time.UnixMilli(now.Add(b.Hold).UnixMilli())) {
		t.Errorf("a slot frees at %s, want when the killed order's hold ends (%s), not after the window", free, now.Add(b.Hold))
	}
	// Past the hold, the killed order's slot is free; the confirmed one is not.
	later := now.Add(11 * time.Minute)
	if !take(later, "after-hold") {
		t.Fatal("the slot of an order that never finished was not given back after its hold")
	}
	if take(later, "one-more") {
		t.Fatal("the confirmed slot was given back")
	}
	if used, err := st.BudgetUsed(ctx, b, later); err != nil || used != 2 {
		t.Errorf("used %d (%v), want 2", used, err)
	}
	// Returned: free at once.
	if err := st.ReturnBudget(ctx, b, "after-hold"); err != nil {
		t.Fatal(err)
	}
	if !take(later, "after-return") {
		t.Error("a returned slot was not free")
	}
	// Confirmed after its hold ran out (a slow order): counted again.
	if err := st.ReturnBudget(ctx, b, "after-return"); err != nil {
		t.Fatal(err)
	}
	if !take(later, "slow") {
		t.Fatal("no slot for the slow order")
	}
	muchLater := later.Add(20 * time.Minute)
	if !take(muchLater, "probe") {
		t.Fatal("the slow order's slot was not freed after its hold")
	}
	if err := st.ReturnBudget(ctx, b, "probe"); err != nil {
		t.Fatal(err)
	}
	if err := st.ConfirmBudget(ctx, b, "slow", later); err != nil {
		t.Fatal(err)
	}
	if take(muchLater, "over") {
		t.Error("a slow order's certificate confirmed after its hold did not count")
	}
}

// TestBudgetsAreTakenAllOrNone: an order's budgets are counted together;
// when one is spent none is counted, and the answer names the spent one
// and when its slot frees.
func TestBudgetsAreTakenAllOrNone(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	orders := Budget{Kind: "orders", Subject: "acct", Limit: 5, Window: 3 * time.Hour}
	certs := Budget{Kind: "certs", Subject: "example.com", Limit: 1, Window: 7 * 24 * time.Hour, Hold: 10 * time.Minute}
	bs, reserved := []Budget{orders, certs}, []int{1, 0}
	now := time.Now()
	if ok, _, _, err := st.TakeBudgets(ctx, bs, now, reserved, "first"); err != nil || !ok {
		t.Fatalf("first order: %v, %v, want counted", ok, err)
	}
	ok, spent, free, err := st.TakeBudgets(ctx, bs, now, reserved, "second")
	if err != nil || ok || spent != 1 {
		t.Fatalf("second order: %v, spent %d, %v, want the certificates budget (1) spent", ok, spent, err)
	}
	if !free.Equal(time.UnixMilli(now.Add(certs.Hold).UnixMilli())) {
		t.Errorf("a slot frees at %s, want when the first order's hold ends", free)
	}
	if used, err := st.BudgetUsed(ctx, orders, now); err != nil || used != 1 {
		t.Errorf("%d orders counted (%v), want 1: the refused order took no slot of the orders budget", used, err)
	}
}

// TestBudgetEventCountedAgainIsCountedOnce: go-redis sends a script again
// when its answer was lost (a read timeout); the run that counted the event
// before finds it counted and says so, rather than counting the order's own
// slot against it and turning it away with its slots held.
func TestBudgetEventCountedAgainIsCountedOnce(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	orders := Budget{Kind: "orders", Subject: "acct", Limit: 1, Window: 3 * time.Hour}
	certs := Budget{Kind: "certs", Subject: "example.com", Limit: 1, Window: 7 * 24 * time.Hour, Hold: 10 * time.Minute}
	bs, reserved := []Budget{orders, certs}, []int{0, 0}
	now := time.Now()
	for _, run := range []string{"first run", "run again"} {
		if ok, spent, _, err := st.TakeBudgets(ctx, bs, now, reserved, "event"); err != nil || !ok {
			t.Fatalf("%s: %v, spent %d, %v, want counted", run, ok, spent, err)
		}
	}
	for _, b := range bs {
		if used, err := st.BudgetUsed(ctx, b, now); err != nil || used != 1 {
			t.Errorf("%s: %d events counted (%v), want 1", b, used, err)
		}
	}
}
