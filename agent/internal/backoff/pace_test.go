package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

// waits returns the first n waits of p's current schedule.
func waits(p *Pace, n int) []time.Duration {
	next := p.schedule()
	var out []time.Duration
	var prev time.Duration
	for i := 1; i <= n; i++ {
		prev = next(i, prev)
		out = append(out, prev)
	}
	return out
}

func sameWaits(t *testing.T, what string, got []time.Duration, want ...time.Duration) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
	}
}

const ms = time.Millisecond

func TestPaceDoublesFromTheFirstPollUntilItHasSeenAWaitEnd(t *testing.T) {
	p := NewPace(25*ms, 5*ms, time.Second)
	sameWaits(t, "unknown CA", waits(p, 8), 25*ms, 50*ms, 100*ms, 200*ms, 400*ms, 800*ms, time.Second, time.Second)
}

func TestPacePollsAtEachHalfOfTheTypicalTimeThenDoubles(t *testing.T) {
	p := NewPace(25*ms, 5*ms, time.Second)
	p.observe(40 * ms)
	sameWaits(t, "typical 40 ms", waits(p, 7), 20*ms, 20*ms, 20*ms, 20*ms, 40*ms, 80*ms, 160*ms)

	quick := NewPace(25*ms, 5*ms, time.Second)
	quick.observe(2 * ms)
	sameWaits(t, "typical 2 ms: never closer than the least", waits(quick, 5), 5*ms, 5*ms, 5*ms, 5*ms, 10*ms)

	slow := NewPace(25*ms, 5*ms, time.Second)
	slow.observe(30 * time.Second)
	sameWaits(t, "typical 30 s: never further apart than the most", waits(slow, 5),
		time.Second, time.Second, time.Second, time.Second, time.Second)
}

func TestPaceAverageMovesByAQuarterAndOneStallMovesItLittle(t *testing.T) {
	p := NewPace(25*ms, 5*ms, time.Second)
	p.observe(100 * ms)
	p.observe(60 * ms)
	if p.typical != 90*ms {
		t.Fatalf("typical %s after 100 ms then 60 ms, want 90ms", p.typical)
	}
	p.observe(time.Minute) // one stalled order
	if p.typical != 90*ms+(360*ms-90*ms)/4 {
		t.Fatalf("typical %s after a one-minute wait, want it to move by at most 3/4 of 90 ms", p.typical)
	}
}

// found runs one wait at p against a CA that is done after took: the time
// of the poll that finds it done, and the number of polls, taught to p.
func found(p *Pace, took time.Duration) (at time.Duration, polls int) {
	next := p.schedule()
	var prev time.Duration
	for polls = 1; ; polls++ {
		prev = next(polls, prev)
		at += prev
		if at >= took {
			p.observe(at)
			return at, polls
		}
	}
}

func TestPaceFollowsTheCA(t *testing.T) {
	p := NewPace(25*ms, 5*ms, time.Second)
	// A quick CA (Pebble on the same machine): the doubling schedule finds
	// it at 25 ms every time; the paced one comes down to a poll or two
	// shortly after it is done.
	var at time.Duration
	var polls int
	for range 30 {
		at, polls = found(p, 7*ms)
	}
	if at > 14*ms || polls > 2 {
		t.Errorf("a CA done after 7 ms: found after %s in %d polls, want at most 14 ms and 2 polls", at, polls)
	}
	// The CA slows down to 1.6 s (a public CA's validation): within a few
	// dozen orders the polls find it soon after it is done, in few polls.
	for i := range 40 {
		at, polls = found(p, 1600*ms)
		t.Logf("order %d: %s, %d polls", i, at, polls)
	}
	if at > 2100*ms || polls > 3 {
		t.Errorf("a CA done after 1.6 s: found after %s in %d polls, want at most 2.1 s and 3 polls", at, polls)
	}
	// The doubling schedule from 25 ms finds a 1.6 s wait only at 2.575 s,
	// after 7 polls: what the pace saves.
	fresh := NewPace(25*ms, 5*ms, time.Second)
	if at, polls := found(fresh, 1600*ms); at != 2575*ms || polls != 7 {
		t.Errorf("doubling: found after %s in %d polls, want 2.575 s and 7", at, polls)
	}
}

func TestPollWaitsForRetryAfterAndLearns(t *testing.T) {
	p := NewPace(time.Millisecond, time.Millisecond, 4*ms)
	began := time.Now()
	calls := 0
	err := p.Poll(context.Background(), 30*ms, func() (bool, error) {
		calls++
		if calls == 1 && time.Since(began) < 30*ms {
			t.Errorf("first poll after %s, before the Retry-After of 30 ms", time.Since(began))
		}
		return calls == 2, nil
	})
	if err != nil || calls != 2 {
		t.Fatalf("poll: %v after %d calls, want done after 2", err, calls)
	}
	if p.typical < 30*ms {
		t.Errorf("typical %s after a wait of at least 30 ms", p.typical)
	}
}

func TestPollHonoursContextAndLearnsNothingFromAFailure(t *testing.T) {
	p := NewPace(time.Millisecond, time.Millisecond, 4*ms)
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("shutting down")
	calls := 0
	err := p.Poll(ctx, 0, func() (bool, error) {
		calls++
		if calls == 3 {
			cancel(cause)
		}
		return false, nil
	})
	if !errors.Is(err, cause) {
		t.Errorf("poll returned %v, want the context's cause", err)
	}
	invalid := errors.New("the order is invalid")
	if err := p.Poll(context.Background(), 0, func() (bool, error) { return false, invalid }); !errors.Is(err, invalid) {
		t.Errorf("poll returned %v, want the check's error", err)
	}
	if p.typical != 0 {
		t.Errorf("typical %s, want none: no wait was seen to end", p.typical)
	}
}
