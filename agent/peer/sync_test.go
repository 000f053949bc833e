package peer

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// countPushes makes the site count the certificates pushed to it.
func (s *testSite) countPushes() *atomic.Int64 {
	var n atomic.Int64
	s.api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, PathPrefix+"certs/") {
			n.Add(1)
		}
		s.srv.ServeHTTP(w, r)
	})
	return &n
}

// startSyncer runs a Syncer for the site until the test ends.
func (s *testSite) startSyncer(t *testing.T) {
	t.Helper()
	sy := NewSyncer(s.fleet)
	sy.Start(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sy.Shutdown(ctx); err != nil {
			t.Errorf("site %s: %v", s.id, err)
		}
	})
}

// TestChangesFanOutToEveryPeer: a certificate written at one site reaches
// the others through the changes stream, once per certificate whatever its
// number of names, and the echo of each receiver ends at "same"; a deletion
// reaches them too and tombstones the certificate there.
func TestChangesFanOutToEveryPeer(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) {
		c.ProbeInterval, c.SyncInterval = 100*time.Millisecond, time.Hour
	}, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	pushes := map[string]*atomic.Int64{}
	for _, s := range sites {
		pushes[s.id] = s.countPushes()
		s.startSyncer(t)
	}
	// Each Syncer exchanges inventories once as it starts: a certificate
	// stored before that ends would reach b and c by a pull, not a push.
	eventually(t, 10*time.Second, "the first inventory exchanges", func() bool {
		for _, s := range sites {
			for _, st := range s.fleet.States() {
				if st.LastSync.IsZero() {
					return false
				}
			}
		}
		return true
	})

	rec := a.store(t, issued(t, time.Now().Add(-time.Hour), "p.example.com", "q.example.com", "r.example.com"))
	eventually(t, 10*time.Second, "the certificate reaches b and c", func() bool {
		return b.holds("q.example.com", rec.Fingerprint) && c.holds("r.example.com", rec.Fingerprint)
	})
	// Each site stored it once, so each pushes it once to each of the
	// others: two pushes reach every site, then it is quiet.
	eventually(t, 10*time.Second, "two pushes at every site", func() bool {
		return pushes["a"].Load() == 2 && pushes["b"].Load() == 2 && pushes["c"].Load() == 2
	})
	time.Sleep(500 * time.Millisecond)
	for id, n := range pushes {
		if n.Load() != 2 {
			t.Errorf("site %s received %d pushes, want 2", id, n.Load())
		}
	}
	// A receiver may get it from the other receiver's echo before a's own
	// push arrives, which it then answers "same": a stored one or two.
	var pushed int64
	for _, st := range a.fleet.States() {
		pushed += st.Pushed
		if !st.Up || st.Pushed > 1 {
			t.Errorf("a's view of %s: %+v, want up with at most one certificate pushed", st.ID, st)
		}
	}
	if pushed < 1 {
		t.Error("a counts no certificate pushed")
	}
	eventually(t, 10*time.Second, "a records its view of the peers", func() bool {
		recorded, err := a.st.PeerStates(ctx)
		return err == nil && len(recorded) == 2 && recorded[0].ID == "b" && recorded[0].Up && recorded[1].Up &&
			recorded[0].Pushed+recorded[1].Pushed == pushed
	})

	if _, err := a.st.DeleteCert(ctx, "q.example.com"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the deletion reaches b and c", func() bool {
		return !b.holds("p.example.com", "") && !c.holds("p.example.com", "") &&
			!b.holds("r.example.com", "") && !c.holds("q.example.com", "")
	})
	for _, s := range []*testSite{b, c} {
		if dead, err := s.st.Tombstoned(ctx, rec.Fingerprint, rec.Names...); err != nil || !dead {
			t.Errorf("site %s: tombstoned %v, %v", s.id, dead, err)
		}
	}
}

// TestSyncNowRepairsWhatPushesMissed: a site that was down while a
// certificate was written and another deleted catches up with one
// inventory exchange.
func TestSyncNowRepairsWhatPushesMissed(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.SyncInterval = time.Hour }, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	now := time.Now()
	old := issued(t, now.Add(-2*time.Hour), "old.example.com")
	var oldFP string
	for _, s := range sites {
		oldFP = s.store(t, old).Fingerprint
	}

	c.down()
	a.startSyncer(t)
	rec := a.store(t, issued(t, now.Add(-time.Hour), "new.example.com"))
	if _, err := a.st.DeleteCert(ctx, "old.example.com"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b follows a", func() bool {
		return b.holds("new.example.com", rec.Fingerprint) && !b.holds("old.example.com", "")
	})
	if c.holds("new.example.com", "") || !c.holds("old.example.com", oldFP) {
		t.Fatal("c changed while it was down")
	}
	eventually(t, 10*time.Second, "a records c down", func() bool {
		recorded, err := a.st.PeerStates(ctx)
		return err == nil && len(recorded) == 2 && recorded[0].Up && !recorded[1].Up &&
			recorded[1].LastError != "" && !recorded[1].LastErrorAt.IsZero()
	})

	c.up(t)
	if err := c.fleet.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.holds("new.example.com", rec.Fingerprint) {
		t.Error("c did not pull the certificate it missed")
	}
	if c.holds("old.example.com", "") {
		t.Error("c still holds the certificate deleted while it was down")
	}
	var pulled int64
	for _, st := range c.fleet.States() {
		pulled += st.Pulled
		if st.LastSync.IsZero() || !st.Up {
			t.Errorf("c's view of %s after the exchange: %+v", st.ID, st)
		}
	}
	if pulled != 1 {
		t.Errorf("c pulled %d certificates, want 1", pulled)
	}
	// Nothing left to repair: a second exchange pulls nothing.
	if err := c.fleet.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	pulled = 0
	for _, st := range c.fleet.States() {
		pulled += st.Pulled
	}
	if pulled != 1 {
		t.Errorf("after a second exchange c pulled %d certificates in all, want still 1", pulled)
	}
}

// TestTombstonesWinOverInventories: a certificate deleted at a while every
// other site was down is not pulled back to a from them, and their copies
// go once they exchange inventories with a.
func TestTombstonesWinOverInventories(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, nil, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	r := issued(t, time.Now().Add(-time.Hour), "z.example.com", "zz.example.com")
	var fp string
	for _, s := range sites {
		fp = s.store(t, r).Fingerprint
	}
	// No Syncer runs: nothing is pushed, as if b and c had been down.
	if _, err := a.st.DeleteCert(ctx, "z.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := a.fleet.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if a.holds("z.example.com", "") || a.holds("zz.example.com", "") {
		t.Fatal("a pulled back the certificate it deleted")
	}
	if !b.holds("z.example.com", fp) || !c.holds("zz.example.com", fp) {
		t.Fatal("a's exchange changed b or c: pulls are all it does")
	}

	// b learns of the tombstone from a, and does not take the copy c
	// still holds.
	if err := b.fleet.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if b.holds("z.example.com", "") || b.holds("zz.example.com", "") {
		t.Error("b still holds the certificate a deleted")
	}
	if dead, err := b.st.Tombstoned(ctx, fp, "z.example.com"); err != nil || !dead {
		t.Errorf("b did not tombstone it: %v, %v", dead, err)
	}
	if err := c.fleet.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if s.holds("z.example.com", "") || s.holds("zz.example.com", "") {
			t.Errorf("site %s holds the deleted certificate after the exchanges", s.id)
		}
		if err := s.fleet.SyncNow(ctx); err != nil {
			t.Error(err)
		}
	}
	for _, s := range sites {
		if s.holds("z.example.com", "") {
			t.Errorf("site %s got the deleted certificate back", s.id)
		}
	}
}

// TestSyncNowDoesNotReadTheRecordsItHolds: to tell which of a peer's
// certificates to pull, an exchange compares fingerprints and dates; it
// does not read every chain and private key held here (a site with many
// names would load them all, for each peer, every interval).
func TestSyncNowDoesNotReadTheRecordsItHolds(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.SyncInterval = time.Hour }, "a", "b", "c")
	a, b := sites["a"], sites["b"]
	var size int64
	for i := range 200 {
		r := issued(t, time.Now().Add(-time.Hour), fmt.Sprintf("n%03d.example.com", i))
		a.store(t, r)
		b.store(t, r)
		size += int64(len(r.FullChain) + len(r.Key))
	}
	outputBytes := func() int64 {
		stats, err := a.rdb.Info(ctx, "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(stats, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_net_output_bytes:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		t.Fatal("no total_net_output_bytes in INFO stats")
		return 0
	}
	before := outputBytes()
	if err := a.fleet.SyncNow(ctx); err != nil {
		t.Fatal(err)
	}
	read := outputBytes() - before
	if read >= size {
		t.Errorf("the exchange read %d bytes from Redis, as much as the %d bytes of the records held", read, size)
	}
	for _, st := range a.fleet.States() {
		if st.Pulled != 0 || st.LastSync.IsZero() {
			t.Errorf("a's view of %s: %+v, want an exchange that pulled nothing", st.ID, st)
		}
	}
}

// TestExchangeFindsAnotherCertificateForTheSameDates: two sites holding
// different certificates for the same names and the same not-after (two
// orders, one at each site) are found out of step, and both keep the one
// store.Supersedes picks: the later not-before, and of two with the same
// dates the greater fingerprint.
func TestExchangeFindsAnotherCertificateForTheSameDates(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.SyncInterval = time.Hour }, "a", "b")
	a, b := sites["a"], sites["b"]
	start := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	end := start.Add(90 * 24 * time.Hour)
	ca := testCA(t, start)
	leaf := func(notBefore time.Time, names ...string) Record {
		c := testenv.NewCert(t, testenv.CertSpec{CommonName: names[0], DNSNames: names, Parent: ca,
			NotBefore: notBefore, NotAfter: end})
		return Record{FullChain: string(c.ChainPEM()), Key: string(c.KeyPEM), Primary: names[0], KeyType: "ec256"}
	}
	// Later not-before at b; the same dates at both for the second name.
	earlier := a.store(t, leaf(start, "d.example.com", "www.d.example.com"))
	later := b.store(t, leaf(start.Add(time.Hour), "d.example.com", "www.d.example.com"))
	tieA := a.store(t, leaf(start, "e.example.com"))
	tieB := b.store(t, leaf(start, "e.example.com"))
	if earlier.NotAfter != later.NotAfter || tieA.Fingerprint == tieB.Fingerprint {
		t.Fatal("the test certificates do not share their not-after")
	}
	tie := max(tieA.Fingerprint, tieB.Fingerprint)
	digests := func(s *testSite) []store.InventoryWindow {
		w, err := s.st.InventoryDigests(ctx, 0, 0, topWidth)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	if slices.Equal(digests(a), digests(b)) {
		t.Fatal("two sites holding other certificates for the same names and dates sum up alike")
	}
	for _, s := range []*testSite{a, b, a} {
		if err := s.fleet.SyncNow(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*testSite{a, b} {
		if !s.holds("www.d.example.com", later.Fingerprint) || !s.holds("e.example.com", tie) {
			t.Errorf("site %s does not hold the superseding certificates", s.id)
		}
	}
	if !slices.Equal(digests(a), digests(b)) {
		t.Error("the sites are not in step after exchanging inventories")
	}
}
