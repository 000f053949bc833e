package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestThreeSitesRacingForNewNames: every round, the first visitor of a new
// name arrives at all three sites at once, so all three sites' agents ask
// the fleet for the name's lease at once. Every round gives exactly one
// order, and every site serves a valid certificate long before
// --reclaim-idle (set to 10 minutes) could have played a part.
// CERTAGENT_RACE_ROUNDS sets the rounds (default 10; docs/benchmarks.md
// runs 100).
func TestThreeSitesRacingForNewNames(t *testing.T) {
	rounds := 10
	if v := os.Getenv("CERTAGENT_RACE_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CERTAGENT_RACE_ROUNDS=%q: want a positive count", v)
		}
		rounds = n
	}
	f := startSites(t, []string{"a", "b", "c"}, "b")
	for _, s := range f.sites {
		s.start(t, "--reclaim-idle", "10m")
	}
	f.waitPeersUp(t)
	roots := f.pebble.Roots(t)
	const bound = 60 * time.Second // far below --reclaim-idle
	var took []time.Duration       // per round and site: first ClientHello to a valid certificate
	for round := range rounds {
		name := fmt.Sprintf("r%d.race.example.test", round)
		before := f.pebble.OrdersCreated(t)
		start := time.Now()
		times := make([]time.Duration, len(f.sites))
		errs := make([]error, len(f.sites))
		var wg sync.WaitGroup
		for i, s := range f.sites {
			wg.Go(func() { times[i], errs[i] = s.untilValid(name, roots, start, bound) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, site %s: %v", round, f.sites[i].id, err)
			}
		}
		took = append(took, times...)
		if n := f.pebble.OrdersCreated(t) - before; n != 1 {
			t.Errorf("round %d: Pebble created %d orders for %s, want 1", round, n, name)
		}
	}
	slices.Sort(took)
	t.Logf("%d rounds, 3 sites: first ClientHello to a valid certificate p50 %s, p90 %s, max %s", rounds,
		took[len(took)/2].Round(time.Millisecond), took[len(took)*9/10].Round(time.Millisecond),
		took[len(took)-1].Round(time.Millisecond))
}

// untilValid opens handshakes for name at the site's nginx, one after the
// other, until one serves a certificate issued for it (the first may be
// held for it, or get the fallback), and returns the time from start.
func (s *site) untilValid(name string, roots *x509.CertPool, start time.Time, bound time.Duration) (time.Duration, error) {
	for time.Since(start) < bound {
		conn, err := tls.DialWithDialer(&netDialer, "tcp", s.nginx.HTTPSAddr,
			&tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err != nil {
			return 0, fmt.Errorf("handshake for %s: %w", name, err)
		}
		chain := conn.ConnectionState().PeerCertificates
		conn.Close()
		if !isFallback(s.stack, chain) && verifyChain(chain, name, roots) == nil {
			return time.Since(start), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("no valid certificate for %s after %s", name, bound)
}
