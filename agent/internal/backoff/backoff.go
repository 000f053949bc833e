// Package backoff holds how the agent waits. Its retries wait longer while a
// failure lasts: the pause doubles from a first one up to a cap, so that
// neither Redis, the CA nor a peer is hammered, and a part that is back is
// used again within the cap. Its polls of a CA follow how long the CA has
// taken lately (Pace).
package backoff

import "time"

// Doubling is a pause that starts at First and doubles up to Most.
type Doubling struct {
	First, Most time.Duration
}

// After is the pause after n failures in a row (n >= 1): First doubled
// n-1 times, at most Most.
func (d Doubling) After(n int) time.Duration {
	p := d.First
	for i := 1; i < n && p < d.Most; i++ {
		p *= 2
	}
	return min(p, d.Most)
}

// Next is the pause that follows prev: First after none (prev zero), else
// prev doubled, at most Most.
func (d Doubling) Next(prev time.Duration) time.Duration {
	if prev <= 0 {
		return min(d.First, d.Most)
	}
	return min(prev*2, d.Most)
}

// Backoff is a Doubling that remembers its last pause, for a loop that
// waits after each failure and starts over after a success. It is not safe
// for concurrent use.
type Backoff struct {
	Doubling
	cur time.Duration
}

// New returns a Backoff from first up to most.
func New(first, most time.Duration) *Backoff {
	return &Backoff{Doubling: Doubling{First: first, Most: most}}
}

// Next returns the pause after one more failure.
func (b *Backoff) Next() time.Duration {
	b.cur = b.Doubling.Next(b.cur)
	return b.cur
}

// Reset starts over at First, after a success.
func (b *Backoff) Reset() { b.cur = 0 }
