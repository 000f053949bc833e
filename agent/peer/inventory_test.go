package peer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLargeInventoriesConvergeInPages: site a holds thousands of
// certificates, most of them expiring in the same second (so no window of
// the digests is narrow enough, and they are listed in many pages); b holds
// part of them and some of its own; c holds none. One exchange each brings
// all three to the same set, with no answer over a page, a summary logged
// rather than a line per certificate, and the heap within a bound; then an
// exchange between sites in step lists nothing.
func TestLargeInventoriesConvergeInPages(t *testing.T) {
	watchdog(t, 5*time.Minute)
	ctx := context.Background()
	logs := &logBuffer{}
	sites := startSites(t, func(c *Config) {
		c.SyncInterval = time.Hour
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	now := time.Now()
	const tied, spread, own = 2*listPage + 500, 1500, 20
	ca := testCA(t, now)
	var all []string
	for i := range tied + spread {
		notBefore := now.Add(-time.Hour)
		if i >= tied {
			notBefore = notBefore.Add(-time.Duration(i-tied) * time.Hour)
		}
		name := fmt.Sprintf("n%d.example.com", i)
		r := issuedBy(t, ca, notBefore, name)
		a.store(t, r)
		if i%3 == 0 {
			b.store(t, r)
		}
		all = append(all, name)
	}
	for i := range own {
		name := fmt.Sprintf("b%d.example.com", i)
		b.store(t, issuedBy(t, ca, now.Add(-time.Hour), name))
		all = append(all, name)
	}

	seeded := time.Now()
	var peak atomic.Uint64
	stop := sampleHeap(&peak)
	for _, s := range []*testSite{c, b, a} {
		if err := s.fleet.SyncNow(ctx); err != nil {
			t.Fatalf("exchange at %s: %v", s.id, err)
		}
	}
	base := stop()
	t.Logf("seeding took %s, the exchanges %s", seeded.Sub(now).Round(time.Millisecond), time.Since(seeded).Round(time.Millisecond))
	for _, s := range sites {
		for _, name := range all {
			if !s.holds(name, "") {
				t.Fatalf("site %s misses %s after the exchanges", s.id, name)
			}
		}
	}
	var pages int64
	for _, s := range sites {
		pages += s.entryPages.Load()
		if largest := s.largestSent.Load(); largest > maxPageAnswer/2 {
			t.Errorf("site %s answered %d bytes at once", s.id, largest)
		}
	}
	if pages < 6 {
		t.Errorf("%d inventory pages answered for %d certificates, want several per site", pages, len(all))
	}
	// The certificates came many at a time (up to pullBatch; windows cut
	// the pages shorter), none alone.
	var asked, gets int64
	for _, s := range sites {
		asked, gets = asked+s.recordsPages.Load(), gets+s.certGets.Load()
	}
	if gets != 0 || asked == 0 || asked > int64(len(all))/10 {
		t.Errorf("%d requests for many records and %d for one, for %d certificates", asked, gets, len(all))
	}
	// The records pass through one page at a time: the heap grows by far
	// less than the certificates' chains and keys would take at once.
	if grown := int64(peak.Load()) - int64(base); grown > 64<<20 {
		t.Errorf("the heap grew by %d MB during the exchanges", grown>>20)
	}
	if lines := strings.Count(logs.String(), "\n"); lines > 20 {
		t.Errorf("%d log lines for %d certificates pulled, want a summary per exchange:\n%s", lines, len(all), logs.String()[:2000])
	}

	// In step: the digests match, nothing is listed.
	for _, s := range sites {
		s.entryPages.Store(0)
		s.largestSent.Store(0)
	}
	for _, s := range sites {
		if err := s.fleet.SyncNow(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range sites {
		if n, largest := s.entryPages.Load(), s.largestSent.Load(); n != 0 || largest > 8<<10 {
			t.Errorf("site %s in step: %d pages listed, largest answer %d bytes", s.id, n, largest)
		}
	}
}

// sampleHeap records the peak of the heap in use every 10 ms until the
// returned stop is called, which returns the heap in use when sampling
// started.
func sampleHeap(peak *atomic.Uint64) (stop func() uint64) {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	base := m.HeapInuse
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		return base
	}
}

// TestDifferingWindows: a window differs when its count or digest differs,
// or when only one site holds certificates there (with the peer's count, 0
// when it holds none: it may hold tombstones for them).
func TestDifferingWindows(t *testing.T) {
	w := func(start, count int64, digest string) WindowDigest {
		return WindowDigest{Start: start, Count: count, Digest: digest}
	}
	remote := []WindowDigest{w(0, 2, "aa"), w(10, 1, "bb"), w(20, 5, "cc"), w(40, 1, "dd")}
	local := []WindowDigest{w(0, 2, "aa"), w(10, 1, "b0"), w(30, 3, "ee"), w(40, 1, "dd"), w(50, 1, "ff")}
	got := differing(remote, local)
	want := []WindowDigest{w(10, 1, "bb"), w(20, 5, "cc"), w(30, 0, ""), w(50, 0, "")}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("differing = %v, want %v", got, want)
	}
	if got := differing(remote, remote); len(got) != 0 {
		t.Errorf("the same windows differ: %v", got)
	}
}

// TestInventoryPagesOfManyNamedCertificatesFitTheAnswerLimit: certificates
// with a hundred long names each, expiring in the same second, make a page
// of listPage entries larger than a client takes at once. The exchange
// still brings them over, in smaller pages, rather than failing on that
// window at every exchange.
func TestInventoryPagesOfManyNamedCertificatesFitTheAnswerLimit(t *testing.T) {
	watchdog(t, 3*time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.SyncInterval = time.Hour }, "a", "b")
	a, b := sites["a"], sites["b"]
	now := time.Now()
	ca := testCA(t, now)
	label := strings.Repeat("x", 60)
	const certs, perCert = 220, 100
	var primaries []string
	for i := range certs {
		names := make([]string, perCert)
		for j := range names {
			names[j] = fmt.Sprintf("%s.%s.%s.s%03d-%03d.example.com", label, label, label, i, j)
		}
		a.store(t, issuedBy(t, ca, now.Add(-time.Hour), names...))
		primaries = append(primaries, names[0])
	}
	if err := b.fleet.SyncNow(ctx); err != nil {
		t.Fatalf("exchange at b: %v", err)
	}
	for _, name := range primaries {
		if !b.holds(name, "") {
			t.Fatalf("b misses %s after the exchange", name)
		}
	}
}

// inventoryPeer is a fake peer site b whose digests put count certificates
// in one window from now on, and whose entries handler answers each page.
func inventoryPeer(t *testing.T, count int64, entries func(offset, limit int64) InventoryPage) (*Fleet, *atomic.Int64) {
	t.Helper()
	var pages atomic.Int64
	now := time.Now().Unix()
	srv, _ := fakePeer(t, map[string]http.HandlerFunc{
		"GET inventory/digests": reply(http.StatusOK, InventoryDigests{Site: "b", Width: topWidth,
			Windows: []WindowDigest{{Start: now - now%topWidth, Count: count, Digest: strings.Repeat("ab", 16)}}}),
		"GET inventory/entries": func(w http.ResponseWriter, r *http.Request) {
			pages.Add(1)
			q := r.URL.Query()
			offset, _ := strconv.ParseInt(q.Get("offset"), 10, 64)
			limit, _ := strconv.ParseInt(q.Get("limit"), 10, 64)
			reply(http.StatusOK, entries(offset, limit))(w, r)
		},
	})
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	st, _ := siteStore(t)
	f, err := NewFleet(Config{Site: "a", Secret: fleetSecret, RootCAs: roots, Store: st, Timeout: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler), Peers: []PeerConfig{{ID: "b", URL: srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	return f, &pages
}

// TestEndlessInventoryPagesAreCutShort: a peer that answers every page of a
// window with nothing and "more" (broken, or hostile) does not keep the
// exchange going: it stops, with an error that says why, after the pages
// the certificates it counted there can fill.
func TestEndlessInventoryPagesAreCutShort(t *testing.T) {
	watchdog(t, time.Minute)
	for _, count := range []int64{0, 3, listBelow} {
		f, pages := inventoryPeer(t, count, func(_, _ int64) InventoryPage {
			return InventoryPage{Site: "b", Certificates: []InventoryEntry{}, Tombstones: []Tombstone{}, More: true}
		})
		err := f.SyncNow(context.Background())
		if !errors.Is(err, errEndlessInventory) || !strings.Contains(err.Error(), "stopped listing it") {
			t.Fatalf("count %d: SyncNow = %v, want the endless inventory cut short", count, err)
		}
		if want := (count+listPage)/listPage + 1; pages.Load() > want {
			t.Errorf("count %d: %d pages asked for, want at most %d", count, pages.Load(), want)
		}
	}
}

// TestInventoryTombstonesGoOnPastTheCertificates: a window with more
// tombstones than certificates is listed to its end: pages full of
// tombstones go on past the certificates the peer counted.
func TestInventoryTombstonesGoOnPastTheCertificates(t *testing.T) {
	watchdog(t, time.Minute)
	const tombstones = 2*listPage + 500
	until := time.Now().Add(24 * time.Hour).Unix()
	f, pages := inventoryPeer(t, 1, func(offset, limit int64) InventoryPage {
		page := InventoryPage{Site: "b", Certificates: []InventoryEntry{}, More: offset+limit < tombstones}
		for i := offset; i < min(offset+limit, tombstones); i++ {
			page.Tombstones = append(page.Tombstones, Tombstone{Name: fmt.Sprintf("t%d.example.com", i),
				Fingerprint: fmt.Sprintf("%064x", i), Until: until})
		}
		return page
	})
	if err := f.SyncNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pages.Load() != 3 {
		t.Errorf("%d pages listed, want 3", pages.Load())
	}
	dead, err := f.cfg.Store.Tombstoned(context.Background(), fmt.Sprintf("%064x", tombstones-1),
		fmt.Sprintf("t%d.example.com", tombstones-1))
	if err != nil || !dead {
		t.Errorf("the last page's tombstone: %v, %v", dead, err)
	}
}
