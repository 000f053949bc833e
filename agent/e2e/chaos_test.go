//go:build chaos

// The heavier fault runs, too long for every CI run: scripts/chaos runs them
// and docs/chaos.md records their results.
package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// 300 names arrive over 60 s at three agents; one agent is killed with
// SIGKILL every 3 s and restarted at once.
func TestChaosKill300(t *testing.T) {
	killScenario(t, 3, 300, 30, 60*time.Second, 3*time.Second, 5*time.Minute)
}

// The CA is unreachable for 60 s in the middle of issuance (the proxy in
// front of Pebble resets every connection, so Pebble keeps its accounts and
// orders, as a CA that comes back does). The agents back off: every attempt
// during the outage is counted and must stay within a bound far below a busy
// loop. Once the CA is back, traffic brings the failed names again and every
// name is issued.
func TestChaosCAOutage60s(t *testing.T) {
	s := startFaultStack(t, faultOptions{retraffic: true,
		pebbleEnv: map[string]string{"PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "2"}})
	st := store.New(s.redis.Client, store.Keys{})
	want := makeNames("n", "outage.test", 120)
	var agents []*agentProc
	for i := range 3 {
		agents = append(agents, s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.outage.test",
			"--retry-first", "5s", "--retry-max", "30s"))
	}
	s.request(t, want[:40])
	s.waitAllStored(t, st, want[:20], 60*time.Second)
	requestsBefore := s.proxy.Requests()

	s.proxy.SetDown(true)
	outageStart := time.Now()
	// Names keep arriving and coming back (nginx records a name again after
	// 2 s here) during the outage, as traffic does.
	for time.Since(outageStart) < 60*time.Second {
		s.request(t, want[40:])
		time.Sleep(3 * time.Second)
	}
	s.proxy.SetDown(false)
	attempts := s.proxy.DownConnects()
	failed := 0
	for _, a := range agents {
		failed += a.logCount("name failed")
	}
	took := s.waitAllStored(t, st, want, 5*time.Minute)
	// Entries recorded again by traffic while another agent ordered their
	// name stay pending until --reclaim-idle (1 min) has passed.
	waitDrained(t, s.redis.Client, st.Keys().Requests(), 2*time.Minute)

	// A busy loop would make thousands of attempts a second. The bound: the
	// names not yet issued at the outage (at most 100), each tried at 0, 5,
	// 15, 35 and 65 s of backoff (5 s doubling to 30 s), ten connections or
	// requests per attempt at most (directory, nonce, retries).
	const bound = 100 * 5 * 10
	if attempts > bound {
		t.Errorf("%d connection attempts to the CA during the 60 s outage, over the bound %d: no backoff", attempts, bound)
	}
	rep := s.orderReport()
	for _, o := range rep.overlaps {
		t.Errorf("two orders in flight at once: %s", o)
	}
	t.Logf("CA down 60 s: %d connection attempts refused (%.1f/s over 3 agents), %d failed orders logged during it; all %d names issued %s after the CA returned; %d requests passed before the outage; %s",
		attempts, float64(attempts)/60, failed, len(want), took.Round(100*time.Millisecond), requestsBefore, rep)
}

// The CA goes away for 60 s and comes back as a new CA (a restarted Pebble:
// new root, no accounts), while 50 names are requested and traffic goes on.
// Measured: how long after the CA is back each of them is issued (median and
// maximum), and how many accounts the fleet registered at the new CA.
func TestChaosCARestart60s(t *testing.T) {
	s := startFaultStack(t, faultOptions{retraffic: true})
	st := store.New(s.redis.Client, store.Keys{})
	for i := range 2 {
		s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.restart.test", "--retry-first", "5s", "--retry-max", "30s")
	}
	before := makeNames("b", "restart.test", 10)
	s.request(t, before)
	s.waitAllStored(t, st, before, 60*time.Second)

	s.proxy.SetDown(true)
	s.dog.away.Store(true)
	s.pebble.Stop(t)
	downAt := time.Now()
	want := makeNames("n", "restart.test", 50)
	for time.Since(downAt) < 60*time.Second {
		s.request(t, want)
		time.Sleep(3 * time.Second)
	}
	s.pebble.Restart(t)
	s.dog.away.Store(false)
	s.proxy.SetDown(false)
	backAt := time.Now()
	s.waitAllStored(t, st, want, 5*time.Minute)

	var delays []time.Duration
	for _, n := range want {
		rec, err := st.GetCert(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		delays = append(delays, max(rec.IssuedAt.Sub(backAt), 0))
	}
	slices.Sort(delays)
	t.Logf("CA down 60 s, back as a new CA: %d names issued %s (median) and %s (max) after it answered again; %d account(s) registered at the new CA; %s",
		len(want), delays[len(delays)/2].Round(100*time.Millisecond), delays[len(delays)-1].Round(100*time.Millisecond),
		s.pebble.AccountsCreated(t), s.orderReport())
}
