// Package clock lets the agent's components read the time from something a
// test can move.
package clock

import "time"

// Clock tells the time; tests replace it.
type Clock interface{ Now() time.Time }

// System is the system clock.
type System struct{}

// Now returns time.Now().
func (System) Now() time.Time { return time.Now() }
