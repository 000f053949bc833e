package manager

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// The periodic check finds every kind of corrupt record and makes it due;
// the renewer's next pass replaces it under the name's lease, with the
// failure memory's backoff when the CA fails, and nginx's request for the
// name gets a new order too (NeedsCertificate).
func TestCorruptRecordsAreFoundAndReplaced(t *testing.T) {
	issuer := &fakeIssuer{}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	checker := NewChecker(CheckerConfig{Store: f.st, Logger: quietLogger(), Clock: f.clock})
	rdb := f.rdb

	var corrupted []string
	for i, c := range testenv.Corruptions(t) {
		name := string(rune('a'+i)) + ".example.com"
		if _, err := f.m.Issue(ctx, []string{name, "www." + name}); err != nil {
			t.Fatal(err)
		}
		f.pass(t) // schedules its renewal months ahead
		if err := c.Apply(ctx, rdb, f.st.Keys().Cert(name)); err != nil {
			t.Fatal(err)
		}
		corrupted = append(corrupted, name)
		need, err := f.m.NeedsCertificate(ctx, name)
		if err != nil || !need {
			t.Errorf("%s: NeedsCertificate = %v, %v: a corrupt record must be ordered again", c.Name, need, err)
		}
	}
	found, err := checker.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != len(corrupted) {
		t.Fatalf("the check found %d corrupt records, want %d: %v", len(found), len(corrupted), found)
	}
	for _, name := range corrupted {
		if at := f.scheduled(t, name); at.After(f.clock.Now()) {
			t.Errorf("%s: due at %s, want now", name, at)
		}
	}

	ordersBefore := issuer.orders.Load()
	f.pass(t)
	if got := issuer.orders.Load() - ordersBefore; got != int64(len(corrupted)) {
		t.Errorf("%d orders for %d corrupt records", got, len(corrupted))
	}
	for _, name := range corrupted {
		rec, err := f.st.GetCert(ctx, name)
		if err != nil {
			t.Errorf("%s after the renewer's pass: %v", name, err)
			continue
		}
		// The replacement covers the names the record listed, when they read.
		if copyErr := func() error { _, err := f.st.GetCert(ctx, "www."+name); return err }(); len(rec.Names) == 2 && copyErr != nil {
			t.Errorf("www.%s: %v", name, copyErr)
		}
	}
	if found, _ := checker.Pass(ctx); len(found) != 0 {
		t.Errorf("still corrupt after the repair: %v", found)
	}

	// A failed replacement counts in the failure memory and waits its backoff.
	issuer.fail = errors.New("the CA says no")
	name := corrupted[0]
	if err := testenv.Corruptions(t)[0].Apply(ctx, rdb, f.st.Keys().Cert(name)); err != nil {
		t.Fatal(err)
	}
	if _, err := checker.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	before := issuer.orders.Load()
	f.pass(t)
	failure, err := f.st.GetFailure(ctx, name)
	if err != nil || failure.Attempts != 1 || issuer.orders.Load() != before+1 {
		t.Fatalf("after a failed replacement: failure %+v (%v), %d orders", failure, err, issuer.orders.Load()-before)
	}
	if _, err := checker.Pass(ctx); err != nil { // makes it due again, at once
		t.Fatal(err)
	}
	f.pass(t)
	if issuer.orders.Load() != before+1 {
		t.Error("ordered again within the backoff")
	}
	if at := f.scheduled(t, name); !at.Equal(failure.NextAttempt.Truncate(time.Second)) {
		t.Errorf("scheduled at %s, want the next attempt %s", at, failure.NextAttempt)
	}
	issuer.fail = nil
	f.clock.Set(failure.NextAttempt.Add(time.Second))
	f.pass(t)
	if _, err := f.st.GetCert(ctx, name); err != nil {
		t.Fatalf("after the backoff: %v", err)
	}
	if _, err := f.st.GetFailure(ctx, name); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the failure record outlived the repair: %v", err)
	}
}

// Two agents that found the same corrupt record order one replacement: the
// second reads the record again under the lease.
func TestARepairedRecordIsNotOrderedTwice(t *testing.T) {
	issuer := &fakeIssuer{}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	if _, err := f.m.Issue(ctx, []string{"a.example.com"}); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.HDel(ctx, f.st.Keys().Cert("a.example.com"), "key").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Repair(ctx, []string{"a.example.com"}); err != nil {
		t.Fatal(err)
	}
	before := issuer.orders.Load()
	if _, err := f.m.Repair(ctx, []string{"a.example.com"}); !errors.Is(err, ErrAlreadyRenewed) {
		t.Errorf("a second repair: %v, want ErrAlreadyRenewed", err)
	}
	if issuer.orders.Load() != before {
		t.Error("a second order for a record already repaired")
	}
}

// Run walks at once and stops with its context.
func TestCheckerRunStopsWithItsContext(t *testing.T) {
	_, st, r := newTestManager(t, &fakeIssuer{})
	ctx, cancel := context.WithCancel(context.Background())
	r.Client.ZAdd(ctx, st.Keys().Expiry(), redis.Z{Score: 1, Member: "a.example.com"})
	r.Client.ZAdd(ctx, st.Keys().Renewals(), redis.Z{Score: 1, Member: "a.example.com"})
	r.Client.Set(ctx, st.Keys().Cert("a.example.com"), "x", 0)
	done := make(chan struct{})
	go func() {
		NewChecker(CheckerConfig{Store: st, Logger: quietLogger(), Interval: time.Hour}).Run(ctx)
		close(done)
	}()
	waitFor(t, "the first walk", func() bool {
		s := r.Client.ZScore(ctx, st.Keys().Renewals(), "a.example.com").Val()
		return s > 1e9
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once its context ended")
	}
}

// A replacement the rate budgets defer waits for them without counting a
// failure; the corrupt record is replaced once they allow.
func TestCorruptRecordReplacementWaitsForTheRateBudgets(t *testing.T) {
	issuer := &fakeIssuer{}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	budgets, err := NewBudgets(f.m, BudgetConfig{Account: "acct", OrdersPerAccount: 1, OrdersWindow: time.Hour, CertsPerDomain: 100})
	if err != nil {
		t.Fatal(err)
	}
	f.r = NewRenewer(RenewerConfig{Manager: f.m, Budgets: budgets, Clock: f.clock})
	if _, err := budgets.Issue(ctx, []string{"a.example.com"}, PriorityRenewal); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.HDel(ctx, f.st.Keys().Cert("a.example.com"), "key").Err(); err != nil {
		t.Fatal(err)
	}
	_, out, err := f.r.RenewName(ctx, "a.example.com", false)
	if err != nil || out != Deferred || issuer.orders.Load() != 1 {
		t.Fatalf("replacement with the order budget spent: %s, %v, %d orders", out, err, issuer.orders.Load())
	}
	if _, err := f.st.GetFailure(ctx, "a.example.com"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a deferral counted as a failure: %v", err)
	}
	if next := f.scheduled(t, "a.example.com"); !next.After(f.clock.Now()) {
		t.Errorf("deferred replacement scheduled at %s, want after now", next)
	}
}
