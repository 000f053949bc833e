package peer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// TestLeaseOneWinnerAcrossSites: two sites that both hold the name's local
// lease ask the fleet for it at the same time; the third site grants it to
// one of them, so exactly one reaches the quorum. A lease granted by a
// majority does not need the site that is down.
func TestLeaseOneWinnerAcrossSites(t *testing.T) {
	watchdog(t, 2*time.Minute)
	ctx := context.Background()
	sites := startSites(t, nil, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]

	for round := range 20 {
		name := fmt.Sprintf("r%d.example.com", round)
		type outcome struct {
			lease *Lease
			local *store.Lock
			err   error
		}
		out := make([]outcome, 2)
		// Both hold their own site's lease before either asks the others,
		// so the third site decides every round.
		for i, s := range []*testSite{a, b} {
			if out[i].local, out[i].err = s.st.AcquireLock(ctx, name, store.LockTTL); out[i].err != nil {
				t.Fatal(out[i].err)
			}
		}
		var wg sync.WaitGroup
		for i, s := range []*testSite{a, b} {
			wg.Go(func() { out[i].lease, out[i].err = s.fleet.Lease(ctx, name) })
		}
		wg.Wait()
		won := 0
		for i, o := range out {
			switch {
			case o.lease != nil:
				won++
			case !errors.Is(o.err, ErrNoQuorum) || !strings.Contains(o.err.Error(), "refused by: "):
				t.Errorf("round %d, site %d: %v, want ErrNoQuorum with the refusing sites", round, i, o.err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d sites won the lease (%v, %v)", round, won, out[0].err, out[1].err)
		}
		for _, o := range out {
			if o.lease != nil {
				if err := o.lease.Release(ctx); err != nil {
					t.Error(err)
				}
			}
			if o.local != nil {
				o.local.Release(ctx)
			}
		}
		// Nothing is left behind at any site: the loser gave back what it got.
		for _, s := range sites {
			if s.rdb.Exists(ctx, s.st.Keys().Lock(name)).Val() != 0 {
				t.Errorf("round %d: site %s still holds a lease", round, s.id)
			}
		}
	}

	// c down: a and b are a majority.
	c.down()
	lease, err := a.fleet.Lease(ctx, "m.example.com")
	if err != nil {
		t.Fatalf("lease with c down: %v", err)
	}
	if got := b.rdb.Get(ctx, b.st.Keys().Lock("m.example.com")).Val(); got != lease.Holder() || !strings.HasPrefix(got, "a/") {
		t.Errorf("b holds %q, want %s", got, lease.Holder())
	}
	if err := lease.Release(ctx); err != nil {
		t.Error(err)
	}
	// b down too: a alone is short of the quorum of 2.
	b.down()
	if _, err := a.fleet.Lease(ctx, "m.example.com"); !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "not reached: b, c") {
		t.Errorf("lease with b and c down: %v", err)
	}
}

// TestLeaseKeepAliveAndRelease: a kept lease outlives its TTL at the peers,
// is lost (and said so once) when the peers no longer hold it, and is
// released everywhere.
func TestLeaseKeepAliveAndRelease(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.LeaseTTL = 3 * time.Second }, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	holderAt := func(s *testSite, name string) string { return s.rdb.Get(ctx, s.st.Keys().Lock(name)).Val() }

	lease := a.leaseAsAnOrder(t, "k.example.com")
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	lostCalls := make(chan error, 2)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		lease.KeepAlive(kctx, func(err error) { lostCalls <- err })
	}()
	waitExtendedAt(t, "k.example.com", b, c)
	for _, s := range []*testSite{b, c} {
		if got := holderAt(s, "k.example.com"); got != lease.Holder() {
			t.Errorf("after an extension, %s holds %q, want %s", s.id, got, lease.Holder())
		}
	}
	if _, err := b.fleet.Lease(ctx, "k.example.com"); !errors.Is(err, ErrNoQuorum) {
		t.Errorf("another site took the kept lease: %v", err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-kept:
	case <-time.After(5 * time.Second):
		t.Fatal("KeepAlive still runs after Release")
	}
	for _, s := range []*testSite{b, c} {
		if got := holderAt(s, "k.example.com"); got != "" {
			t.Errorf("after Release, %s holds %q", s.id, got)
		}
	}
	if len(lostCalls) != 0 {
		t.Errorf("lost called for a lease kept then released: %v", <-lostCalls)
	}

	// Both peers lose it (taken over after an expiry, say): lost is called
	// once and KeepAlive returns.
	lease, err := a.fleet.Lease(ctx, "k.example.com")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*testSite{b, c} {
		s.rdb.Set(ctx, s.st.Keys().Lock("k.example.com"), "z/other", time.Minute)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		lease.KeepAlive(ctx, func(err error) { lostCalls <- err })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("KeepAlive did not notice the lost lease")
	}
	if len(lostCalls) != 1 {
		t.Fatalf("lost called %d times, want once", len(lostCalls))
	}
	if err := <-lostCalls; !errors.Is(err, ErrNoQuorum) {
		t.Errorf("lost with %v, want ErrNoQuorum", err)
	}
	if err := lease.Release(ctx); err != nil {
		t.Error(err)
	}
	for _, s := range []*testSite{b, c} {
		if got := holderAt(s, "k.example.com"); got != "z/other" {
			t.Errorf("Release removed another holder's lease at %s: %q", s.id, got)
		}
	}
}

// TestLeaseKeepAliveRidesOutAShortPeerOutage: with two sites (both needed),
// a peer that misses extension rounds for a moment does not cut the lease
// off: the rounds are tried again until the peer's grant runs out. A peer
// gone for longer than the lease does end it, once.
func TestLeaseKeepAliveRidesOutAShortPeerOutage(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.LeaseTTL = 3 * time.Second }, "a", "b")
	a, b := sites["a"], sites["b"]
	const name = "outage.example.com"
	holderAtB := func() string { return b.rdb.Get(ctx, b.st.Keys().Lock(name)).Val() }

	lease := a.leaseAsAnOrder(t, name)
	defer lease.Release(ctx)
	lostCalls := make(chan error, 2)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		lease.KeepAlive(ctx, func(err error) { lostCalls <- err })
	}()
	bState := func() PeerState { return a.fleet.States()[0] }

	// b goes down until an extension round has failed to reach it, then
	// comes back within its grant.
	b.down()
	eventually(t, 10*time.Second, "an extension round failing at b", func() bool {
		st := bState()
		return !st.Up && !st.LastErrorAt.IsZero()
	})
	b.up(t)
	eventually(t, 10*time.Second, "an extension reaching b again", func() bool { return bState().Up })
	time.Sleep(4 * time.Second) // past the 3 s TTL: only extensions keep it
	if len(lostCalls) != 0 {
		t.Fatalf("lost after b missed a round: %v", <-lostCalls)
	}
	if got := holderAtB(); got != lease.Holder() {
		t.Errorf("after b came back, b holds %q, want %s", got, lease.Holder())
	}
	if _, err := b.fleet.Lease(ctx, name); !errors.Is(err, ErrNoQuorum) {
		t.Errorf("b's own order took the kept lease: %v", err)
	}

	// b gone for longer than the lease: lost once, naming b.
	b.down()
	select {
	case <-kept:
	case <-time.After(20 * time.Second):
		t.Fatal("KeepAlive still runs with b gone for longer than the lease")
	}
	if len(lostCalls) != 1 {
		t.Fatalf("lost called %d times, want once", len(lostCalls))
	}
	if err := <-lostCalls; !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "not reached: b") {
		t.Errorf("lost with %v, want ErrNoQuorum naming b", err)
	}
}

// TestLeaseReleasedWhereTheAnswerWasLate: a peer that granted the lease but
// answered after the timeout is not counted toward the quorum, and is still
// released: otherwise its site could not order the name, nor grant it to
// anyone else, until the lease expires.
func TestLeaseReleasedWhereTheAnswerWasLate(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.Timeout = time.Second }, "a", "b", "c")
	a, c := sites["a"], sites["c"]
	c.api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.srv.ServeHTTP(w, r)
		if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, PathPrefix+"leases/") {
			time.Sleep(2 * time.Second) // granted, but the answer comes too late
		}
	})
	const name = "late.example.com"
	lease := a.leaseAsAnOrder(t, name) // a and b are a majority
	if got := c.rdb.Get(ctx, c.st.Keys().Lock(name)).Val(); got != lease.Holder() {
		t.Fatalf("c holds %q, want %s (it granted the lease)", got, lease.Holder())
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if got := s.rdb.Get(ctx, s.st.Keys().Lock(name)).Val(); got == lease.Holder() {
			t.Errorf("after Release, %s still holds the lease", s.id)
		}
	}
}

// TestLeaseBelowAMajorityRespectsARefusal: with a quorum below a majority
// (two sites, --peer-quorum 1), a site orders alone when the other cannot be
// reached, but not when the other answers that the name is leased there:
// that site, or one it granted, is ordering it.
func TestLeaseBelowAMajorityRespectsARefusal(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.Quorum, c.LeaseTTL = 1, 3*time.Second }, "a", "b")
	a, b := sites["a"], sites["b"]
	const name = "two.example.com"

	held, err := b.st.AcquireLock(ctx, name, store.LockTTL)
	if err != nil {
		t.Fatal(err)
	}
	if lease, err := a.fleet.Lease(ctx, name); !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "refused by: b") {
		t.Errorf("b holds the name: %v, %v; want ErrNoQuorum naming b", lease != nil, err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// Granted by b: a orders, and b's own agents are kept out.
	lease, err := a.fleet.Lease(ctx, name)
	if err != nil {
		t.Fatalf("b grants it: %v", err)
	}
	if _, err := b.st.AcquireLock(ctx, name, store.LockTTL); !errors.Is(err, store.ErrLockHeld) {
		t.Errorf("b's agent took the name a holds: %v", err)
	}
	// b loses it to another holder (an expiry, say): the lease is lost.
	b.rdb.Set(ctx, b.st.Keys().Lock(name), "z/other", time.Minute)
	lost := make(chan error, 1)
	lease.KeepAlive(ctx, func(err error) { lost <- err })
	select {
	case err := <-lost:
		if !errors.Is(err, ErrNoQuorum) {
			t.Errorf("lost with %v, want ErrNoQuorum", err)
		}
	default:
		t.Error("KeepAlive returned without calling lost")
	}
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b.rdb.Del(ctx, b.st.Keys().Lock(name))

	// b unreachable: a orders alone, as the quorum of 1 allows.
	b.down()
	lease, err = a.fleet.Lease(ctx, name)
	if err != nil {
		t.Fatalf("b down: %v", err)
	}
	_ = lease.Release(ctx)
}

// TestLeaseThreeSitesRacingSettleOnOne: three sites that each hold the
// name's local lease ask the fleet for it at once, so each first refuses
// the other two. Every round exactly one of them wins, within the race
// window, and the others give way with ErrGaveWay (wrapping
// store.ErrLockHeld: somebody holds the name). CI runs 30 rounds; the
// benchmark in docs/benchmarks.md runs 100 with orders at Pebble.
func TestLeaseThreeSitesRacingSettleOnOne(t *testing.T) {
	watchdog(t, 3*time.Minute)
	ctx := context.Background()
	sites := startSites(t, nil, "a", "b", "c")
	order := []*testSite{sites["a"], sites["b"], sites["c"]}
	winners := map[string]int{}
	for round := range 30 {
		name := fmt.Sprintf("race%d.example.com", round)
		leases := make([]*Lease, 3)
		errs := make([]error, 3)
		locals := make([]*store.Lock, 3)
		var wg sync.WaitGroup
		for i, s := range order {
			wg.Go(func() {
				if locals[i], errs[i] = s.st.AcquireLock(ctx, name, store.LockTTL); errs[i] != nil {
					return
				}
				leases[i], errs[i] = s.fleet.Lease(ctx, name)
				if errs[i] != nil {
					// As an order does: the local lease goes with the fleet's.
					locals[i].Release(ctx)
				}
			})
		}
		wg.Wait()
		won := 0
		for i, l := range leases {
			switch {
			case l != nil:
				won++
				winners[order[i].id]++
			case !errors.Is(errs[i], store.ErrLockHeld):
				t.Errorf("round %d, site %s: %v, want an error wrapping store.ErrLockHeld", round, order[i].id, errs[i])
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d sites won (%v)", round, won, errs)
		}
		for i, l := range leases {
			if l != nil {
				l.Release(ctx)
				locals[i].Release(ctx)
			}
		}
	}
	t.Logf("winners: %v", winners)
}

// TestLeaseRaceSettlesWithASiteUnanswering: of three sites, c takes longer
// than the peer timeout to answer (a host gone, its packets dropped), and a
// and b ask for the same name at once. The first round of each lasts the
// whole timeout, longer than the race window; a, the lower id, still asks
// b again once b has given way, and wins, rather than both giving up and
// leaving the name to --reclaim-idle.
func TestLeaseRaceSettlesWithASiteUnanswering(t *testing.T) {
	watchdog(t, 2*time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.Timeout = raceFor + 500*time.Millisecond }, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	c.api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // never answers within the caller's timeout
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	for round := range 3 {
		name := fmt.Sprintf("unanswered%d.example.com", round)
		racers := []*testSite{a, b}
		leases := make([]*Lease, len(racers))
		errs := make([]error, len(racers))
		var wg sync.WaitGroup
		for i, s := range racers {
			wg.Go(func() {
				local, err := s.st.AcquireLock(ctx, name, store.LockTTL)
				if err != nil {
					errs[i] = err
					return
				}
				leases[i], errs[i] = s.fleet.Lease(ctx, name)
				if errs[i] != nil {
					local.Release(ctx)
				}
			})
		}
		wg.Wait()
		if leases[0] == nil || leases[1] != nil {
			t.Fatalf("round %d: a won %v, b won %v (%v); want a alone", round, leases[0] != nil, leases[1] != nil, errs)
		}
		leases[0].Release(ctx)
		a.rdb.Del(ctx, a.st.Keys().Lock(name))
	}
}
