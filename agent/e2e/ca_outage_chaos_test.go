//go:build chaos

package e2e

import (
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// 50 names requested while the CA refuses connections for 60 s, then
// while it accepts them and never answers for 60 s: how soon after it
// answers again they are issued (docs/chaos.md).
func TestChaosCAOutageQueuedNames(t *testing.T) {
	t.Run("refusing", func(t *testing.T) {
		caOutageScenario(t, 50, 60*time.Second, func(p *testenv.CAProxy, down bool) { p.SetDown(down) })
	})
	t.Run("hanging", func(t *testing.T) {
		caOutageScenario(t, 50, 60*time.Second, func(p *testenv.CAProxy, down bool) { p.SetHanging(down) })
	})
}
