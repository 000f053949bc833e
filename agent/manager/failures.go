package manager

import (
	"math/rand/v2"
	"time"

	"github.com/certagent/certagent/agent/internal/backoff"
)

// RetryDelay is the pause after the attempts-th failure in a row: first
// doubling from first up to most, less up to a quarter at random so that
// names that failed together (a CA outage) do not all come back at once. The
// jitter never makes a pause shorter than the one before it.
func RetryDelay(attempts int, first, most time.Duration, random func() float64) time.Duration {
	d := backoff.Doubling{First: first, Most: most}.After(attempts)
	return d - time.Duration(float64(d)/4*random())
}

func defaultRandom() float64 { return rand.Float64() }
