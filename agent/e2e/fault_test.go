package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// killScenario runs agents agents over the requested names, which arrive
// spread over spread (as traffic does; issuing all at once takes Pebble less
// than a second), killing one agent with SIGKILL every killEvery and
// restarting it at once, and checks the outcome:
// every allowed name ends with one valid certificate stored, no denied name
// gets one, nothing stays pending, and no name ever had two orders in flight
// at the CA. Shared by the CI test and the heavier chaos run.
func killScenario(t *testing.T, agents, allowed, denied int, spread, killEvery, limit time.Duration) {
	// Validation that takes 0 or 1 s (Pebble's random VA sleep) keeps
	// orders in flight long enough for the kills to cut some of them.
	s := startFaultStack(t, faultOptions{pebbleEnv: map[string]string{"PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "2"}})
	st := store.New(s.redis.Client, store.Keys{})
	want := makeNames("n", "kill.test", allowed)
	refused := makeNames("x", "denied.test", denied)
	var procs []*agentProc
	for i := range agents {
		procs = append(procs, s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.kill.test",
			// Short leases and reclaim bound, so the names of a killed agent
			// come back within seconds instead of minutes.
			"--lock-ttl", "6s", "--reclaim-idle", "3s", "--retry-first", "2s", "--workers", "4"))
	}
	start := time.Now()

	var mu sync.Mutex
	kills := 0
	stop := make(chan struct{})
	killerDone := make(chan struct{})
	// Stopped on every path: a failure below must not leave the killer
	// restarting agents (and logging) after the test has returned.
	stopKiller := sync.OnceFunc(func() {
		close(stop)
		<-killerDone
	})
	defer stopKiller()
	go func() {
		defer close(killerDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(killEvery):
			}
			a := procs[i%len(procs)]
			a.kill(t)
			a.start(t)
			mu.Lock()
			kills++
			mu.Unlock()
		}
	}()
	all := append(append([]string{}, want...), refused...)
	for i, n := range all {
		s.request(t, []string{n})
		time.Sleep(spread / time.Duration(len(all)))
		if i%20 == 0 {
			s.dog.check(t)
		}
	}
	took := s.waitAllStored(t, st, want, limit)
	stopKiller()
	waitDrained(t, s.redis.Client, st.Keys().Requests(), limit)

	for _, n := range refused {
		if _, err := st.GetCert(context.Background(), n); err == nil {
			t.Errorf("%s is not allowed but got a certificate", n)
		}
	}
	if n := s.redis.Client.Keys(context.Background(), "certagent:cert:*").Val(); len(n) != allowed {
		t.Errorf("%d certificate records, want %d", len(n), allowed)
	}
	rep := s.orderReport()
	for _, o := range rep.overlaps {
		t.Errorf("two orders in flight at once: %s", o)
	}
	// The agent that takes a killed agent's name over resumes its order: only
	// a kill between the CA's answer to newOrder and the order's record in
	// Redis costs a second order.
	perName := float64(rep.orders) / float64(allowed)
	if perName > 1.1 {
		t.Errorf("%.2f orders per name (%d for %d names), want at most 1.1: the killed agents' orders were not resumed", perName, rep.orders, allowed)
	}
	if got := s.pebble.OrdersCreated(t); got != rep.orders {
		t.Errorf("Pebble created %d orders, the proxy saw %d: some went around it", got, rep.orders)
	}
	fenced := 0
	for _, a := range procs {
		fenced += a.logCount("lease lost during the order")
	}
	t.Logf("%d agents, %d allowed + %d denied names requested over %s, %d SIGKILLs (one every %s): all issued %s after the last request; %s, %.2f orders per name; %d stale writes refused by the fence",
		agents, allowed, denied, spread, kills, killEvery, took.Round(100*time.Millisecond), rep, perName, fenced)
	t.Logf("total %s", time.Since(start).Round(100*time.Millisecond))
}

// Three agents, one of them killed with SIGKILL every 1.5 s and restarted,
// while 120 names arrive over 12 s.
func TestKilledAgentsLoseNothing(t *testing.T) {
	killScenario(t, 3, 120, 12, 12*time.Second, 1500*time.Millisecond, 90*time.Second)
}

// Redis (with an append-only file, as a production Redis has) is killed and
// started again in the middle of issuance: the agents reconnect, the entries
// that were pending survive in Redis and are all handled, and nginx serves the
// certificates it had cached while Redis is away. An order whose lease or
// write Redis cut is left pending and taken up again; one whose challenge the
// CA checked while nginx could not read the token (nginx answers 503), or
// whose token the restart lost, is ordered again at once by its agent (Redis
// started after the token was written). Traffic goes on here as it does in
// production, for a name whose second order fails too.
func TestRedisRestartMidRunLosesNothing(t *testing.T) {
	s := startFaultStack(t, faultOptions{
		pebbleEnv:  map[string]string{"PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "2"},
		redisExtra: []string{"--appendonly", "yes", "--appendfsync", "always"},
		retraffic:  true,
	})
	st := store.New(s.redis.Client, store.Keys{})
	before, after := makeNames("b", "restart.test", 30), makeNames("a", "restart.test", 20)
	var agents []*agentProc
	for i := range 2 {
		agents = append(agents, s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.restart.test",
			"--lock-ttl", "6s", "--reclaim-idle", "3s", "--retry-first", "2s"))
	}
	s.request(t, before)
	// Wait for a first certificate and let nginx cache it with a handshake.
	var cached string
	for deadline := time.Now().Add(30 * time.Second); cached == ""; {
		for _, n := range before {
			if len(s.checkStored(t, st, []string{n})) == 0 {
				cached = n
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no certificate within 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitServedReal(t, s, cached)
	issuedBefore := len(before) - len(s.checkStored(t, st, before))

	s.redis.Stop()
	chain, err := handshakeAt(s.nginx.HTTPSAddr, cached)
	if err != nil || chain[0].Equal(s.nginx.FallbackCert) {
		t.Errorf("with Redis down nginx did not serve the cached certificate of %s (err %v)", cached, err)
	}
	time.Sleep(3 * time.Second) // the agents see errors and back off meanwhile
	s.redis.Start()

	s.request(t, after)
	all := append(append([]string{}, before...), after...)
	took := s.waitAllStored(t, st, all, 90*time.Second)
	waitDrained(t, s.redis.Client, st.Keys().Requests(), 30*time.Second)
	rep := s.orderReport()
	for _, o := range rep.overlaps {
		t.Errorf("two orders in flight at once: %s", o)
	}
	interrupted, failed := 0, 0
	for _, a := range agents {
		interrupted += a.logCount("order interrupted; the entry stays pending")
		failed += a.logCount("name failed")
	}
	t.Logf("Redis killed with %d of %d names issued, down 3 s; all %d issued %s after the second batch; %s; %d orders interrupted and left pending, %d failed at the CA (retried on later traffic)",
		issuedBefore, len(before), len(all), took.Round(100*time.Millisecond), rep, interrupted, failed)
}

// waitServedReal handshakes until nginx serves name's real certificate
// (which also puts it in nginx's cache).
func waitServedReal(t *testing.T, s *faultStack, name string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		chain, err := handshakeAt(s.nginx.HTTPSAddr, name)
		if err == nil && !chain[0].Equal(s.nginx.FallbackCert) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: nginx still serves the fallback 20 s after it was stored (err %v)", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Pebble rejects half of the good nonces (badNonce): the ACME client retries
// them, and every name is issued. An order can still fail when one request
// draws a bad nonce too often in a row; its name is ordered again when
// traffic brings it back, so the traffic goes on here.
func TestNonceRejectionStillIssuesEverything(t *testing.T) {
	s := startFaultStack(t, faultOptions{pebbleEnv: map[string]string{"PEBBLE_WFE_NONCEREJECT": "50"}, retraffic: true})
	st := store.New(s.redis.Client, store.Keys{})
	want := makeNames("n", "nonce.test", 30)
	var agents []*agentProc
	for i := range 2 {
		// The traffic brings names back while their order runs; those entries
		// wait for --reclaim-idle (and are then acknowledged as issued).
		agents = append(agents, s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.nonce.test", "--retry-first", "2s",
			"--reclaim-idle", "3s"))
	}
	s.request(t, want)
	took := s.waitAllStored(t, st, want, 60*time.Second)
	waitDrained(t, s.redis.Client, st.Keys().Requests(), 30*time.Second)
	failed := 0
	for _, a := range agents {
		failed += a.logCount("name failed")
	}
	t.Logf("PEBBLE_WFE_NONCEREJECT=50: %d names issued in %s; %s; %d failed orders (retried on later traffic)",
		len(want), took.Round(100*time.Millisecond), s.orderReport(), failed)
}
