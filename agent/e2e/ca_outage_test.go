package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// A CA that goes away (refusing connections, or accepting them and never
// answering) is noticed once for the fleet. The names requested meanwhile
// wait for it without failure records, and nginx does not hold their
// handshakes; once the CA answers they are all issued without any client
// coming back for them.
func TestNamesRequestedWhileTheCAIsDownAreIssuedWhenItReturns(t *testing.T) {
	for _, mode := range []struct {
		name string
		set  func(p *testenv.CAProxy, down bool)
	}{
		{"refusing", func(p *testenv.CAProxy, down bool) { p.SetDown(down) }},
		{"hanging", func(p *testenv.CAProxy, down bool) { p.SetHanging(down) }},
	} {
		t.Run(mode.name, func(t *testing.T) {
			caOutageScenario(t, 20, 0, mode.set)
		})
	}
}

// caOutageScenario runs the outage that set plays, at least lasting
// outage, with count names requested during it, against 2 agents, and logs
// how soon they are issued after it.
func caOutageScenario(t *testing.T, count int, outage time.Duration, set func(p *testenv.CAProxy, down bool)) {
	s := startFaultStack(t, faultOptions{waitLua: waitConfig(4)})
	st := store.New(s.redis.Client, store.Keys{})
	ctx := context.Background()
	for i := range 2 {
		// A failure record would hold a name back for an hour: the test
		// sees it instead of a late issuance.
		s.newAgent(t, fmt.Sprintf("agent-%d", i), "--allow", "*.outage.test", "--retry-first", "1h")
	}
	s.request(t, []string{"warm.outage.test"})
	s.waitAllStored(t, st, []string{"warm.outage.test"}, time.Minute)

	set(s.proxy, true)
	outageStart := time.Now()
	// The first name's order finds the CA down (at once, or after the
	// response timeout of a hanging CA).
	s.request(t, []string{"first.outage.test"})
	waitUntil(t, "the fleet's record of the outage", func() bool {
		down, err := st.CADown(ctx, s.proxy.DirectoryURL)
		return err == nil && down != nil
	})
	down, _ := st.CADown(ctx, s.proxy.DirectoryURL)
	before := statusOf(t, s.nginx)
	names := append([]string{"first.outage.test"}, makeNames("n", "outage.test", count)...)
	s.request(t, names[1:])
	for _, n := range names {
		waitUntil(t, "the waiting mark of "+n, func() bool {
			state, reason, _ := st.IssuingMark(ctx, n)
			return state == store.Refused && strings.HasPrefix(reason, "deferred: CA ")
		})
	}
	afterFirst := statusOf(t, s.nginx)
	// Once marked, nothing holds these names.
	s.request(t, names)
	afterSecond := statusOf(t, s.nginx)
	// A first handshake may wait for the agent's mark (the grace); none
	// may be held until the deadline, and once marked, none waits at all
	// (a handshake that finds the refusal ends its wait at once).
	held := func(from, to map[string]float64, result string) float64 {
		return sum(to, metricWaitResults, `result="`+result+`"`) - sum(from, metricWaitResults, `result="`+result+`"`)
	}
	if n := held(before, afterSecond, "deadline"); n != 0 {
		t.Errorf("%v handshakes held until the deadline while the CA was known down: before %s; after %s",
			n, results(before), results(afterSecond))
	}
	if n := held(afterFirst, afterSecond, "grace"); n != 0 {
		t.Errorf("%v handshakes of names marked as waiting for the CA were held for the grace: %s", n, results(afterSecond))
	}
	failures, err := st.ListFailures(ctx, 0)
	if err != nil || len(failures) != 0 {
		t.Errorf("failure records during the outage: %+v %v", failures, err)
	}

	time.Sleep(time.Until(outageStart.Add(outage)))
	attempts := s.proxy.DownConnects()
	set(s.proxy, false)
	returned := time.Now()
	took := s.waitAllStored(t, st, names, 2*time.Minute)
	waitDrained(t, s.redis.Client, st.Keys().Requests(), time.Minute)
	if failures, _ := st.ListFailures(ctx, 0); len(failures) != 0 {
		t.Errorf("failure records after the outage: %+v", failures)
	}
	if waiting, _ := st.WaitingForCA(ctx, 1000); len(waiting) != 0 {
		t.Errorf("names still waiting for the CA: %v", waiting)
	}
	if d, _ := st.CADown(ctx, s.proxy.DirectoryURL); d != nil {
		t.Errorf("the CA is still recorded down: %+v", d)
	}
	for _, o := range s.orderReport().overlaps {
		t.Errorf("two orders in flight at once: %s", o)
	}
	t.Logf("outage of %s recorded as %q; %d attempts at the CA while down; %d names issued: after the CA returned median %s, last %s (seen by the test after %s); waits: %s",
		returned.Sub(outageStart).Round(time.Second), down.Reason, attempts, len(names), issuedAfter(t, st, names, returned, 0.5), issuedAfter(t, st, names, returned, 1),
		took.Round(10*time.Millisecond), results(afterSecond))
}

// issuedAfter returns the q-quantile of the names' issue times after since.
func issuedAfter(t *testing.T, st *store.Store, names []string, since time.Time, q float64) time.Duration {
	t.Helper()
	recs, _, err := st.GetCerts(context.Background(), names)
	if err != nil {
		t.Fatal(err)
	}
	var ds []time.Duration
	for _, r := range recs {
		if r != nil {
			ds = append(ds, r.IssuedAt.Sub(since))
		}
	}
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[int(q*float64(len(ds)-1))].Round(100 * time.Millisecond)
}
