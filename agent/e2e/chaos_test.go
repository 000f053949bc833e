//go:build chaos

// The heavier fault runs, too long for every CI run: scripts/chaos runs them
// and docs/chaos.md records their figures. They measure; what they assert
// holds whatever the timing: every name issued, nothing left pending, no name
// with two orders in flight, no failure record left for an outage that was
// not the name's fault, and no handshake that fails.
//
// The scale is the documented one unless the environment shrinks it for a
// quick check:
//
//	CHAOS_OUTAGE       how long the CA is away (60s)
//	CHAOS_NAMES        names requested while it is away (50)
//	CHAOS_WAIT         how long the names may take once the CA or Redis is
//	                   back before the run reports them missing (150s)
//	CHAOS_ORDERS       names of the kill run (300)
//	CHAOS_REDIS_NAMES  orders in flight when Redis is killed (30)
//	CHAOS_REDIS_DOWN   how long Redis stays down (3s)
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// 300 names arrive over 60 s at three agents; one agent is killed with
// SIGKILL every 3 s and restarted at once: 20 kills. Its figure is the
// orders per name at the CA.
func TestChaosKill300(t *testing.T) {
	names := chaosCount(t, "CHAOS_ORDERS", 300)
	// One name every 200 ms, as in the full run, whatever the scale.
	spread := time.Duration(names) * 200 * time.Millisecond
	killScenario(t, 3, names, names/10, spread, 3*time.Second, 5*time.Minute)
}

// The CA's port refuses connections (resets them) for the outage, then it
// answers again with its accounts and orders kept, as a CA behind a
// restarted load balancer does.
func TestChaosCARefusing(t *testing.T) {
	caFaultScenario(t, caFault{
		what: "refusing connections",
		down: func(t *testing.T, s *faultStack) { s.proxy.SetDown(true) },
		up:   func(t *testing.T, s *faultStack) { s.proxy.SetDown(false) },
	})
}

// The CA accepts connections and never answers any request, the directory
// and nonces included; when it comes back the held requests go on to it.
func TestChaosCAHanging(t *testing.T) {
	caFaultScenario(t, caFault{
		what: "hanging (accepting, never answering)",
		down: func(t *testing.T, s *faultStack) {
			s.proxy.Inject(testenv.Fault{Kind: testenv.FaultHang, Path: testenv.AllRequests})
		},
		up: func(t *testing.T, s *faultStack) { s.proxy.ClearFaults() },
	})
}

// The CA goes away (its port refuses connections) and comes back as a new
// CA: Pebble is stopped and started again on the same address, with a new
// root and no accounts, as after `docker compose down` and `up`. The
// agents' stored account URL is then answered accountDoesNotExist.
func TestChaosCARestart(t *testing.T) {
	caFaultScenario(t, caFault{
		what: "restarted (new root, no accounts)",
		down: func(t *testing.T, s *faultStack) {
			s.proxy.SetDown(true)
			s.dog.away.Store(true)
			s.pebble.Stop(t)
		},
		up: func(t *testing.T, s *faultStack) {
			s.pebble.Restart(t)
			s.dog.away.Store(false)
			s.proxy.SetDown(false)
		},
		figures: func(t *testing.T, s *faultStack) string {
			return fmt.Sprintf("%d account(s) registered at the new CA", s.pebble.AccountsCreated(t))
		},
	})
}

// caFault takes the CA away and brings it back.
type caFault struct {
	what     string
	down, up func(t *testing.T, s *faultStack)
	// figures, if set, adds what only this fault shows to the report.
	figures func(t *testing.T, s *faultStack) string
}

// caFaultScenario runs two agents with the shipped settings and nginx
// holding first handshakes as shipped; once two names are issued (the
// account is registered), the CA goes away for CHAOS_OUTAGE while
// CHAOS_NAMES new names are requested through handshakes, and comes back.
// No client comes back for a name: each must be issued on the agents' own.
// Figures: how long after the CA answered again each name was issued, how
// long the handshakes during the outage took (held or not), the agents' CPU
// and their requests to the CA during the outage.
func caFaultScenario(t *testing.T, fault caFault) {
	outage := chaosDuration(t, "CHAOS_OUTAGE", 60*time.Second)
	count := chaosCount(t, "CHAOS_NAMES", 50)
	wait := chaosDuration(t, "CHAOS_WAIT", 150*time.Second)
	s := startFaultStack(t, faultOptions{holdFirstHandshakes: true})
	st := store.New(s.redis.Client, store.Keys{})
	var agents []*agentProc
	for i := range 2 {
		agents = append(agents, s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.outage.test"))
	}
	warm := makeNames("w", "outage.test", 2)
	s.request(t, warm)
	s.waitAllStored(t, st, warm, 60*time.Second)
	want := makeNames("n", "outage.test", count)

	cpuBefore := agentsCPU(t, agents)
	callsBefore := s.proxy.DownConnects() + s.proxy.Requests()
	fault.down(t, s)
	downAt := time.Now()
	// The names arrive over the outage, the last one a few seconds before
	// its end so that a held handshake ends while the CA is still away.
	handshakes := requestOver(t, s, want, max(outage-5*time.Second, outage/2))
	time.Sleep(time.Until(downAt.Add(outage)))
	downFor := time.Since(downAt)
	calls := s.proxy.DownConnects() + s.proxy.Requests() - callsBefore
	cpu := agentsCPU(t, agents) - cpuBefore
	fault.up(t, s)

	issued, missing := s.waitIssued(t, st, want, wait)
	figures := ""
	if fault.figures != nil {
		figures = "; " + fault.figures(t, s)
	}
	held := 0
	for _, d := range handshakes {
		if d > time.Second {
			held++
		}
	}
	t.Logf("CA %s for %s, %d names requested meanwhile, 2 agents: %d of %d issued within %s of the CA answering again (%s); handshakes during the outage %s, %d held over 1 s; agents' CPU during the outage %s (%.1f%% of one core); %.1f requests or connections a second to the CA while it was away (%d); %d failed orders logged; %s%s",
		fault.what, downFor.Round(100*time.Millisecond), count, len(issued), count, wait, spreadOf(issued),
		spreadOf(handshakes), held, cpu, 100*cpu.Seconds()/downFor.Seconds(), float64(calls)/downFor.Seconds(), calls,
		logCount(agents, "name failed"), s.orderReport(), figures)
	s.checkOutcome(t, st, want, missing)
}

// TestChaosRedisKill kills Redis (SIGKILL) while the orders of 30 names are
// in flight; Redis keeps an append-only file synced every second, its
// default, so the writes of the last second are lost. Redis comes back after
// CHAOS_REDIS_DOWN; no client comes back for a name. Figure: how long after
// Redis is back each name is issued.
func TestChaosRedisKill(t *testing.T) {
	count := chaosCount(t, "CHAOS_REDIS_NAMES", 30)
	down := chaosDuration(t, "CHAOS_REDIS_DOWN", 3*time.Second)
	wait := chaosDuration(t, "CHAOS_WAIT", 150*time.Second)
	s := startFaultStack(t, faultOptions{
		// Validation takes 0-5 s, so the orders are still running at the kill.
		pebbleEnv:  map[string]string{"PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "5"},
		redisExtra: []string{"--appendonly", "yes"},
	})
	st := store.New(s.redis.Client, store.Keys{})
	var agents []*agentProc
	for i := range 2 {
		// Enough workers for every name's order to run at once.
		agents = append(agents, s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.rediskill.test",
			"--workers", strconv.Itoa((count+1)/2)))
	}
	want := makeNames("r", "rediskill.test", count)
	s.request(t, want)
	inFlight := s.waitOrdersStarted(t, count, 60*time.Second)
	var unissued []string
	for _, m := range s.checkStored(t, st, want) {
		unissued = append(unissued, strings.Fields(m)[0])
	}

	s.redis.Stop()
	time.Sleep(down)
	s.redis.Start()

	issued, missing := s.waitIssued(t, st, unissued, wait)
	t.Logf("Redis killed (SIGKILL) with %d orders in flight and %d of %d names issued, down %s: of the other %d, %d issued within %s of Redis being back (%s); %d failed orders logged; %s",
		inFlight, count-len(unissued), count, down, len(unissued), len(issued), wait, spreadOf(issued),
		logCount(agents, "name failed"), s.orderReport())
	s.checkOutcome(t, st, want, missing)
}

// checkOutcome asserts what must hold after a fault, whatever the timing:
// every name issued, no failure record left, no two orders in flight for a
// name, nothing pending.
func (s *faultStack) checkOutcome(t *testing.T, st *store.Store, want, missing []string) {
	t.Helper()
	if len(missing) > 0 {
		t.Errorf("%d names without a certificate: %s", len(missing), firstNames(missing))
	}
	var failed []string
	for _, n := range want {
		if _, err := st.GetFailure(context.Background(), n); err == nil {
			failed = append(failed, n)
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d names have a failure record for a fault that was not theirs: %s", len(failed), firstNames(failed))
	}
	for _, o := range s.proxy.Overlaps() {
		t.Errorf("two orders in flight at once: %s", o)
	}
	if len(missing) == 0 {
		waitDrained(t, s.redis.Client, st.Keys().Requests(), 30*time.Second)
	}
}

// firstNames lists the first ten names and how many more there are.
func firstNames(names []string) string {
	if len(names) > 10 {
		return strings.Join(names[:10], ", ") + fmt.Sprintf(" and %d more", len(names)-10)
	}
	return strings.Join(names, ", ")
}

// requestOver makes nginx see each name in a handshake, the names spread
// evenly over span, and returns how long each handshake took once all are
// done. A handshake that fails fails the test: the worst case is the
// fallback certificate.
func requestOver(t *testing.T, s *faultStack, names []string, span time.Duration) []time.Duration {
	t.Helper()
	took := make([]time.Duration, len(names))
	var wg sync.WaitGroup
	start := time.Now()
	for i, n := range names {
		time.Sleep(time.Until(start.Add(span * time.Duration(i) / time.Duration(len(names)))))
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			if _, err := handshakeAt(s.nginx.HTTPSAddr, n); err != nil {
				t.Errorf("handshake for %s: %v", n, err)
			}
			took[i] = time.Since(began)
		}()
	}
	wg.Wait()
	return took
}

// waitIssued polls until every name has a valid certificate or limit has
// passed. It returns how long after the call each name was first seen
// issued, and the names still without a certificate.
func (s *faultStack) waitIssued(t *testing.T, st *store.Store, names []string, limit time.Duration) (map[string]time.Duration, []string) {
	t.Helper()
	start := time.Now()
	issued := map[string]time.Duration{}
	pending := names
	for {
		s.dog.check(t)
		var missing []string
		for _, m := range s.checkStored(t, st, pending) {
			missing = append(missing, strings.Fields(m)[0])
		}
		at := time.Since(start)
		for _, n := range pending {
			if !slices.Contains(missing, n) {
				issued[n] = at
			}
		}
		pending = missing
		if len(pending) == 0 || at > limit {
			return issued, pending
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitOrdersStarted waits until the CA has answered count newOrders, and
// returns how many orders are still in flight (no certificate downloaded,
// not invalid).
func (s *faultStack) waitOrdersStarted(t *testing.T, count int, limit time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		s.dog.check(t)
		orders := s.proxy.Orders()
		if len(orders) >= count {
			inFlight := 0
			for _, o := range orders {
				if !o.Done {
					inFlight++
				}
			}
			return inFlight
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d orders at the CA after %s, want %d", len(orders), limit, count)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agentsCPU returns the CPU time, user and system, the agents' running
// processes have used, from /proc/<pid>/stat.
func agentsCPU(t *testing.T, agents []*agentProc) time.Duration {
	t.Helper()
	var total time.Duration
	for _, a := range agents {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.cmd.Process.Pid))
		if err != nil {
			t.Fatalf("CPU time of %s: %v", a.name, err)
		}
		// After the command name in parentheses: the state (field 3), ...,
		// utime (14) and stime (15), in clock ticks of 10 ms (USER_HZ).
		fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
		for _, f := range fields[11:13] {
			ticks, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				t.Fatalf("CPU time of %s: %q in /proc/%d/stat: %v", a.name, f, a.cmd.Process.Pid, err)
			}
			total += time.Duration(ticks) * 10 * time.Millisecond
		}
	}
	return total
}

func logCount(agents []*agentProc, substr string) int {
	n := 0
	for _, a := range agents {
		n += a.logCount(substr)
	}
	return n
}

// spreadOf describes durations by their median and maximum.
func spreadOf[D map[string]time.Duration | []time.Duration](durations D) string {
	var ds []time.Duration
	switch d := any(durations).(type) {
	case map[string]time.Duration:
		for _, v := range d {
			ds = append(ds, v)
		}
	case []time.Duration:
		ds = slices.Clone(d)
	}
	if len(ds) == 0 {
		return "none"
	}
	slices.Sort(ds)
	median := ds[len(ds)/2]
	if len(ds)%2 == 0 {
		median = (ds[len(ds)/2-1] + median) / 2
	}
	return fmt.Sprintf("median %s, max %s", median.Round(100*time.Millisecond), ds[len(ds)-1].Round(100*time.Millisecond))
}

func chaosDuration(t *testing.T, key string, def time.Duration) time.Duration {
	return chaosSetting(t, key, def, time.ParseDuration)
}

func chaosCount(t *testing.T, key string, def int) int {
	return chaosSetting(t, key, def, strconv.Atoi)
}

// chaosSetting reads a scale from the environment; a value that does not
// parse or is not positive fails the run.
func chaosSetting[T int | time.Duration](t *testing.T, key string, def T, parse func(string) (T, error)) T {
	t.Helper()
	raw := os.Getenv(key)
	if raw == "" {
		return def
	}
	v, err := parse(raw)
	if err == nil && v <= 0 {
		err = fmt.Errorf("not positive")
	}
	if err != nil {
		t.Fatalf("%s=%q: %v", key, raw, err)
	}
	return v
}
