package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
)

func newTestConcurrency(clock *testenv.Clock, floor, ceiling int) *Concurrency {
	return NewConcurrency(ConcurrencyConfig{Floor: floor, Start: floor, Ceiling: ceiling, Slow: 10 * time.Second,
		Calm: 5 * time.Second, Clock: clock, Logger: quietLogger()})
}

// runOrders takes n slots at once (failing the test if fewer are free),
// lets took pass on the clock and ends each with outcome.
func runOrders(t *testing.T, c *Concurrency, clock *testenv.Clock, n int, took time.Duration, outcome error) {
	t.Helper()
	var dones []func(error)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		done, err := c.Acquire(ctx)
		cancel()
		if err != nil {
			t.Fatalf("slot %d of %d not free (limit %d, running %d)", len(dones)+1, n, c.Limit(), c.Running())
		}
		dones = append(dones, done)
	}
	clock.Add(took)
	for _, done := range dones {
		done(outcome)
	}
}

var (
	errRateLimited = &acme.ProblemDetails{Type: acme.RateLimitedErr, HTTPStatus: http.StatusTooManyRequests,
		Detail: "too many new orders (300) from this account in the last 3h0m0s"}
	errServerInternal = &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:serverInternal",
		HTTPStatus: http.StatusInternalServerError, Detail: "Error creating new order"}
	errUnauthorized = &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:unauthorized",
		HTTPStatus: http.StatusForbidden, Detail: "Invalid response from http://a.example/.well-known/acme-challenge/x"}
)

func TestConcurrencyStartsHighEnoughForABurstWithinItsBounds(t *testing.T) {
	for _, tc := range []struct{ floor, start, ceiling, want int }{
		{4, 0, 32, 16}, // the defaults: a burst of 16 new names is ordered at once
		{4, 0, 10, 10},
		{20, 0, 32, 20},
		{2, 5, 32, 5},
	} {
		c := NewConcurrency(ConcurrencyConfig{Floor: tc.floor, Start: tc.start, Ceiling: tc.ceiling, Logger: quietLogger()})
		if got := c.Limit(); got != tc.want {
			t.Errorf("floor %d, start %d, ceiling %d: starts at %d, want %d", tc.floor, tc.start, tc.ceiling, got, tc.want)
		}
	}
	c := NewConcurrency(ConcurrencyConfig{Fixed: 3, Logger: quietLogger()})
	if got := c.Limit(); got != 3 {
		t.Errorf("fixed at 3: starts at %d", got)
	}
}

func TestConcurrencyGrowsFromTheFloorToTheCeilingWhileOrdersSucceedQuickly(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := newTestConcurrency(clock, 4, 20)
	var limits []int
	for range 4 {
		limits = append(limits, c.Limit())
		runOrders(t, c, clock, c.Limit(), time.Second, nil)
	}
	// Doubling each round until the first cut, capped by the ceiling.
	want := []int{4, 8, 16, 20}
	for i := range want {
		if limits[i] != want[i] {
			t.Fatalf("limits per round %v, want %v", limits, want)
		}
	}
	runOrders(t, c, clock, 20, time.Second, nil)
	if c.Limit() != 20 {
		t.Errorf("limit %d after more quick successes, want the ceiling 20", c.Limit())
	}
}

func TestConcurrencyHalvesOnRateLimitedServerErrorsAndSlowAnswers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		took    time.Duration
		outcome error
	}{
		{"rateLimited", time.Second, errRateLimited},
		{"5xx", time.Second, errServerInternal},
		{"slow success", 11 * time.Second, nil},
		{"slow failure", 11 * time.Second, errors.New("polling the order: context deadline exceeded")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := testenv.NewClock(time.Now())
			c := newTestConcurrency(clock, 2, 32)
			runOrders(t, c, clock, 2, time.Second, nil)
			runOrders(t, c, clock, 4, time.Second, nil)
			runOrders(t, c, clock, 8, time.Second, nil)
			if c.Limit() != 16 {
				t.Fatalf("limit %d before the cut, want 16", c.Limit())
			}
			runOrders(t, c, clock, 1, tc.took, tc.outcome)
			if c.Limit() != 8 {
				t.Errorf("limit %d after %s, want 8 (halved)", c.Limit(), tc.name)
			}
		})
	}
}

func TestConcurrencyCutsOncePerCalmAndNeverBelowTheFloor(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := newTestConcurrency(clock, 3, 32)
	runOrders(t, c, clock, 3, time.Second, nil)
	runOrders(t, c, clock, 6, time.Second, nil)
	if c.Limit() != 12 {
		t.Fatalf("limit %d, want 12", c.Limit())
	}
	// Twelve orders in flight all refused at one moment: one cut.
	runOrders(t, c, clock, 12, time.Second, errRateLimited)
	if c.Limit() != 6 {
		t.Fatalf("limit %d after one moment of refusals, want 6", c.Limit())
	}
	clock.Add(5 * time.Second)
	runOrders(t, c, clock, 1, 0, errServerInternal)
	if c.Limit() != 3 {
		t.Fatalf("limit %d after a refusal past the calm, want 3", c.Limit())
	}
	clock.Add(5 * time.Second)
	runOrders(t, c, clock, 1, 0, errServerInternal)
	if c.Limit() != 3 {
		t.Errorf("limit %d, want the floor 3", c.Limit())
	}
}

func TestConcurrencyAfterACutGrowsByOnePerRound(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := newTestConcurrency(clock, 4, 32)
	runOrders(t, c, clock, 4, time.Second, nil)
	runOrders(t, c, clock, 1, time.Second, errRateLimited) // 8 -> 4
	if c.Limit() != 4 {
		t.Fatalf("limit %d, want 4", c.Limit())
	}
	runOrders(t, c, clock, 4, time.Second, nil)
	if c.Limit() != 4 && c.Limit() != 5 {
		t.Fatalf("limit %d after a round of 4 successes, want 4 or 5 (about one more)", c.Limit())
	}
	for range 3 {
		runOrders(t, c, clock, c.Limit(), time.Second, nil)
	}
	if got := c.Limit(); got < 6 || got > 8 {
		t.Errorf("limit %d after four rounds from 4, want about 8 (one more a round, not doubling)", got)
	}
}

func TestConcurrencyLeavesTheLimitForFailuresOfTheName(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := newTestConcurrency(clock, 4, 32)
	runOrders(t, c, clock, 4, time.Second, errUnauthorized)
	runOrders(t, c, clock, 4, time.Second, context.Canceled)
	if c.Limit() != 4 {
		t.Errorf("limit %d after failed validations and cancelled orders, want 4 (unchanged)", c.Limit())
	}
}

// A validation the CA failed is the name's doing however long it took: a
// customer's DNS that times out makes the CA's validation slow, not the CA.
func TestConcurrencyLeavesTheLimitForSlowFailedValidations(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := newTestConcurrency(clock, 4, 32)
	runOrders(t, c, clock, 4, time.Second, nil)
	if c.Limit() != 8 {
		t.Fatalf("limit %d, want 8", c.Limit())
	}
	timedOut := fmt.Errorf("authorizing a.example: %w", &acme.ProblemDetails{Type: "urn:ietf:params:acme:error:dns",
		HTTPStatus: http.StatusBadRequest, Detail: "DNS problem: query timed out looking up A for a.example"})
	runOrders(t, c, clock, 4, 40*time.Second, timedOut)
	clock.Add(10 * time.Second)
	runOrders(t, c, clock, 4, 40*time.Second, errUnauthorized)
	if c.Limit() != 8 {
		t.Errorf("limit %d after slow failed validations, want 8 (unchanged)", c.Limit())
	}
}

func TestConcurrencyFixedNeverAdapts(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := NewConcurrency(ConcurrencyConfig{Fixed: 3, Floor: 1, Ceiling: 50, Clock: clock, Logger: quietLogger()})
	runOrders(t, c, clock, 3, time.Second, nil)
	runOrders(t, c, clock, 3, time.Second, nil)
	if c.Limit() != 3 {
		t.Fatalf("fixed limit moved to %d on success", c.Limit())
	}
	runOrders(t, c, clock, 3, time.Minute, errRateLimited)
	if c.Limit() != 3 {
		t.Errorf("fixed limit moved to %d on a refusal", c.Limit())
	}
}

func TestConcurrencyHoldsTheOrderPastTheLimitUntilASlotFrees(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := newTestConcurrency(clock, 1, 1)
	done, err := c.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(error))
	go func() {
		next, err := c.Acquire(context.Background())
		if err != nil {
			close(got)
			return
		}
		got <- next
	}()
	select {
	case <-got:
		t.Fatal("a second order ran past a limit of one")
	case <-time.After(50 * time.Millisecond):
	}
	done(nil)
	done(nil) // a second call is ignored
	select {
	case next := <-got:
		if next == nil {
			t.Fatal("the waiting order got no slot")
		}
		if c.Running() != 1 {
			t.Errorf("%d running, want 1", c.Running())
		}
		next(nil)
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting order did not get the freed slot")
	}

	// A waiter that gives up takes no slot.
	done, _ = c.Acquire(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Acquire past the limit with an ending context: %v", err)
	}
	done(nil)
	if c.Running() != 0 {
		t.Errorf("%d running after every order ended, want 0", c.Running())
	}
}

// The time an order spends publishing its DNS-01 answer and waiting for the
// TXT record to be visible is the name's DNS provider's, not the CA's: a
// provider that takes longer than Slow does not cut the limit.
func TestConcurrencyDoesNotCountTheDNSAnswersTime(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	c := newTestConcurrency(clock, 4, 32)
	ctx := acmeclient.WithAnswerTime(context.Background())
	var dones []func(error)
	for range 4 {
		done, err := c.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		dones = append(dones, done)
	}
	clock.Add(40 * time.Second)
	acmeclient.NoteAnswerTime(ctx, 35*time.Second)
	dones[0](nil)
	dones[1](&acme.ProblemDetails{Type: "urn:ietf:params:acme:error:malformed", HTTPStatus: http.StatusBadRequest})
	dones[2](nil)
	dones[3](nil)
	if c.Limit() != 7 {
		t.Errorf("limit %d after orders whose DNS answers took 35 s of their 40, want 7 (grown, no cut)", c.Limit())
	}
}
