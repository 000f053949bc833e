package backoff

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Pace schedules the polls of one kind of wait at a CA — an order turning
// ready once its validations were asked for, or valid once finalized —
// around how long that wait has lasted at this CA so far.
//
// A fixed first poll fits no CA: a CA on the same network (or Pebble)
// finishes in a few milliseconds, so every order would idle until the first
// poll, while Let's Encrypt validates from several places for a second or
// more, so early polls are asked in vain and the doubling waits overshoot
// the moment it is done by up to half their length. Pace keeps a moving
// average of the time at which a poll found the wait over (the typical
// time) and polls at each half of it, up to twice the typical time, then
// doubles its waits as before. A CA that gets quicker is found at the first
// poll and the average falls; one that gets slower is found later and it
// rises. It is safe for concurrent use.
type Pace struct {
	first, least, most time.Duration

	mu      sync.Mutex
	typical time.Duration // 0 until a wait was seen to end
}

// NewPace returns a Pace that polls first after first (until it has seen a
// wait end), never sooner than least after the last poll, and at most most
// apart.
func NewPace(first, least, most time.Duration) *Pace {
	return &Pace{first: first, least: least, most: most}
}

// schedule returns the waits before each poll, as a function of the poll's
// number (1 for the first) and the wait before it.
func (p *Pace) schedule() func(n int, prev time.Duration) time.Duration {
	p.mu.Lock()
	typical := p.typical
	p.mu.Unlock()
	if typical == 0 {
		return func(_ int, prev time.Duration) time.Duration { return p.doubled(prev, p.first) }
	}
	step := min(max(typical/2, p.least), p.most)
	return func(n int, prev time.Duration) time.Duration {
		if n <= 4 { // at each half of the typical time, up to twice it
			return step
		}
		return p.doubled(prev, step)
	}
}

// doubled is the wait after prev, from first when there was none.
func (p *Pace) doubled(prev, first time.Duration) time.Duration {
	if prev <= 0 {
		return min(first, p.most)
	}
	return min(prev*2, p.most)
}

// observe takes in that a wait was found over took after it began. One
// wait far longer than the typical one (a CA stalled once) moves the
// average by at most three quarters of it, so the next orders are not
// polled late.
func (p *Pace) observe(took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.typical == 0 {
		p.typical = took
		return
	}
	took = min(took, 4*p.typical)
	p.typical += (took - p.typical) / 4
}

// Poll calls check at the pace's times until it reports done, fails, or
// ctx ends; the first call waits at least notBefore (the CA's Retry-After).
// The time at which check reported done teaches the pace.
func (p *Pace) Poll(ctx context.Context, notBefore time.Duration, check func() (bool, error)) error {
	began := time.Now()
	next := p.schedule()
	wait := max(next(1, 0), notBefore)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for n := 2; ; n++ {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the CA: %w", context.Cause(ctx))
		case <-timer.C:
		}
		done, err := check()
		if err != nil {
			return err
		}
		if done {
			p.observe(time.Since(began))
			return nil
		}
		wait = next(n, wait)
		timer.Reset(wait)
	}
}
