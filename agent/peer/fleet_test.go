package peer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

func TestNewFleetChecksItsConfiguration(t *testing.T) {
	st := store.New(nil, store.Keys{})
	good := func() Config {
		return Config{Site: "a", Secret: fleetSecret, Store: st, Peers: []PeerConfig{
			{ID: "b", URL: "https://b.example:8443"}, {ID: "c", URL: "https://c.example:8443"}}}
	}
	f, err := NewFleet(good())
	if err != nil {
		t.Fatal(err)
	}
	if f.quorum != 2 || f.cfg.TokenRule != TokenRuleMajority || f.cfg.Timeout != DefaultTimeout ||
		f.cfg.SyncInterval != DefaultSyncInterval || f.cfg.ProbeInterval != DefaultProbeInterval || f.cfg.LeaseTTL != store.LockTTL {
		t.Errorf("defaults: quorum %d, %+v", f.quorum, f.cfg)
	}
	if states := f.States(); len(states) != 2 || states[0].ID != "b" || states[1].URL != "https://c.example:8443" || states[0].Up {
		t.Errorf("initial states %+v", states)
	}
	for _, tc := range []struct {
		what   string
		change func(*Config)
	}{
		{"no store", func(c *Config) { c.Store = nil }},
		{"bad site id", func(c *Config) { c.Site = "A" }},
		{"short secret", func(c *Config) { c.Secret = []byte("short") }},
		{"no peers", func(c *Config) { c.Peers = nil }},
		{"self among peers", func(c *Config) { c.Peers[1].ID = "a" }},
		{"duplicate peer", func(c *Config) { c.Peers[1].ID = "b" }},
		{"bad peer id", func(c *Config) { c.Peers[1].ID = "c:1" }},
		{"plain HTTP", func(c *Config) { c.Peers[1].URL = "http://c.example:8443" }},
		{"quorum too large", func(c *Config) { c.Quorum = 4 }},
		{"negative quorum", func(c *Config) { c.Quorum = -1 }},
		{"unknown token rule", func(c *Config) { c.TokenRule = "most" }},
		{"lease TTL under 3 s", func(c *Config) { c.LeaseTTL = time.Second }},
		{"lease TTL over the peers' cap", func(c *Config) { c.LeaseTTL = MaxLeaseTTL + time.Second }},
	} {
		cfg := good()
		tc.change(&cfg)
		if _, err := NewFleet(cfg); err == nil {
			t.Errorf("%s: accepted", tc.what)
		}
	}
	cfg := good()
	cfg.Quorum, cfg.TokenRule = 3, TokenRuleAll
	if f, err := NewFleet(cfg); err != nil || f.quorum != 3 {
		t.Errorf("quorum of every site: %v", err)
	}
}

func TestParsePeersAndThePeersFile(t *testing.T) {
	got, err := ParsePeers([]string{" b=https://b.example:8443 ", "", "c = https://c.example"})
	if err != nil || len(got) != 2 || got[0] != (PeerConfig{ID: "b", URL: "https://b.example:8443"}) ||
		got[1] != (PeerConfig{ID: "c", URL: "https://c.example"}) {
		t.Errorf("ParsePeers = %+v, %v", got, err)
	}
	for _, bad := range []string{"https://b.example", "B=https://b.example", "b=http://b.example", "b="} {
		if _, err := ParsePeers([]string{bad}); err == nil {
			t.Errorf("ParsePeers(%q) accepted", bad)
		}
	}

	path := filepath.Join(t.TempDir(), "peers")
	os.WriteFile(path, []byte("# the other sites\nb=https://b.example:8443\n\n  c=https://c.example:8443  # the backup site\n"), 0o600)
	got, err = ReadPeersFile(path)
	if err != nil || len(got) != 2 || got[1].ID != "c" || got[1].URL != "https://c.example:8443" {
		t.Errorf("ReadPeersFile = %+v, %v", got, err)
	}
	os.WriteFile(path, []byte("b=https://b.example:8443\nc=ftp://c.example\n"), 0o600)
	if _, err := ReadPeersFile(path); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("a bad second line: %v, want the line number", err)
	}
	if _, err := ReadPeersFile(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing file was accepted")
	}
}

// watchdog fails loudly, with every goroutine's stack, when a test runs
// past d: a call that hangs must not hang the whole suite.
func watchdog(t *testing.T, d time.Duration) {
	timer := time.AfterFunc(d, func() {
		panic(fmt.Sprintf("%s still runs after %s", t.Name(), d))
	})
	t.Cleanup(func() { timer.Stop() })
}

// eventually waits up to d for ok to hold.
func eventually(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	testenv.WaitFor(t, d, what, ok)
}

// testSite is one site of a fleet under test: its store (a key prefix of
// the test's Redis), its peer API over HTTPS and its view of the others.
type testSite struct {
	id    string
	st    *store.Store
	rdb   redis.UniversalClient
	api   *httptest.Server
	addr  string
	fleet *Fleet
	srv   *Server
}

// startSites starts the sites ids, each answering the others, with fleet
// configurations adjusted by tweak (nil: the defaults).
func startSites(t *testing.T, tweak func(*Config), ids ...string) map[string]*testSite {
	t.Helper()
	r := testenv.StartRedis(t)
	sites := map[string]*testSite{}
	roots := x509.NewCertPool()
	for _, id := range ids {
		st := store.New(r.Client, store.Keys{Prefix: id + ":"})
		var others []string
		for _, o := range ids {
			if o != id {
				others = append(others, o)
			}
		}
		srv, err := NewServer(ServerConfig{Site: id, Secret: fleetSecret, Peers: others, Store: st,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		s := &testSite{id: id, st: st, rdb: r.Client, srv: srv}
		s.api = httptest.NewTLSServer(srv)
		s.addr = s.api.Listener.Addr().String()
		roots.AddCert(s.api.Certificate())
		t.Cleanup(func() { s.api.Close() })
		sites[id] = s
	}
	for _, id := range ids {
		cfg := Config{Site: id, Secret: fleetSecret, RootCAs: roots, Store: sites[id].st,
			Timeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)}
		for _, o := range ids {
			if o != id {
				cfg.Peers = append(cfg.Peers, PeerConfig{ID: o, URL: sites[o].api.URL})
			}
		}
		if tweak != nil {
			tweak(&cfg)
		}
		f, err := NewFleet(cfg)
		if err != nil {
			t.Fatal(err)
		}
		sites[id].fleet = f
	}
	return sites
}

// down closes the site's peer API: its peers' calls are refused.
func (s *testSite) down() { s.api.Close() }

// up serves the site's peer API again on the same address.
func (s *testSite) up(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	eventually(t, 5*time.Second, "listening again on "+s.addr, func() bool {
		ln, err = net.Listen("tcp", s.addr)
		return err == nil
	})
	s.api = httptest.NewUnstartedServer(s.srv)
	s.api.Listener = ln
	s.api.StartTLS()
	t.Cleanup(func() { s.api.Close() })
}

// leaseAsAnOrder takes the lease on name as an order does: in the site's
// own Redis first (held until the test ends), then across the sites.
func (s *testSite) leaseAsAnOrder(t *testing.T, name string) *Lease {
	t.Helper()
	ctx := context.Background()
	local, err := s.st.AcquireLock(ctx, name, store.LockTTL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = local.Release(ctx) })
	lease, err := s.fleet.Lease(ctx, name)
	if err != nil {
		t.Fatalf("leasing %s from %s: %v", name, s.id, err)
	}
	return lease
}

// holds reports whether the site stores a record for name with fingerprint
// ("" for any record).
func (s *testSite) holds(name, fingerprint string) bool {
	rec, err := s.st.GetCert(context.Background(), name)
	return err == nil && (fingerprint == "" || rec.Fingerprint == fingerprint)
}

// store puts r at the site like a local order would and returns the record.
func (s *testSite) store(t *testing.T, r Record) *store.CertRecord {
	t.Helper()
	ctx := context.Background()
	rec, err := store.NewCertRecord([]byte(r.FullChain), []byte(r.Key), r.Primary)
	if err != nil {
		t.Fatal(err)
	}
	rec.KeyType, rec.IssuedAt = r.KeyType, time.Unix(r.IssuedAt, 0)
	if err := s.st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestTokensFollowTheRule(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, nil, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	tokenAt := func(s *testSite, token string) string {
		return s.rdb.Get(ctx, s.st.Keys().Token("t.example.com", token)).Val()
	}

	// Every site up: every site holds the token, and cleanup removes it
	// everywhere.
	tokens := a.fleet.Tokens(a.st)
	if err := tokens.PutToken(ctx, "t.example.com", "tok1", "tok1.thumb"); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if v := tokenAt(s, "tok1"); v != "tok1.thumb" {
			t.Errorf("site %s holds %q", s.id, v)
		}
		if ttl := s.rdb.TTL(ctx, s.st.Keys().Token("t.example.com", "tok1")).Val(); ttl <= 0 || ttl > store.TokenTTL {
			t.Errorf("site %s: TTL %s", s.id, ttl)
		}
	}
	if err := tokens.DeleteToken(ctx, "t.example.com", "tok1"); err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if v := tokenAt(s, "tok1"); v != "" {
			t.Errorf("site %s still holds %q after cleanup", s.id, v)
		}
	}

	// c down: a majority (a and b) is enough for the default rule...
	c.down()
	if err := tokens.PutToken(ctx, "t.example.com", "tok2", "tok2.thumb"); err != nil {
		t.Fatalf("majority with c down: %v", err)
	}
	if tokenAt(a, "tok2") == "" || tokenAt(b, "tok2") == "" {
		t.Error("the token is not held at a and b")
	}
	if st := a.fleet.States(); st[1].ID != "c" || st[1].Up || st[1].LastError == "" || !st[0].Up {
		t.Errorf("states after the push: %+v", st)
	}

	// ...not for "all", which withdraws the token from a and b.
	all := a.fleet.cfg
	all.TokenRule = TokenRuleAll
	strict, err := NewFleet(all)
	if err != nil {
		t.Fatal(err)
	}
	err = strict.Tokens(a.st).PutToken(ctx, "t.example.com", "tok3", "tok3.thumb")
	if err == nil || !strings.Contains(err.Error(), "not reached: c") {
		t.Fatalf("rule all with c down: %v, want an error naming c", err)
	}
	if tokenAt(a, "tok3") != "" || tokenAt(b, "tok3") != "" {
		t.Error("the token was not withdrawn after the rule failed")
	}

	// b down too: no majority either.
	b.down()
	if err := tokens.PutToken(ctx, "t.example.com", "tok4", "tok4.thumb"); err == nil ||
		!strings.Contains(err.Error(), "not reached: b, c") {
		t.Errorf("majority with b and c down: %v", err)
	}
	if tokenAt(a, "tok4") != "" {
		t.Error("the token was not withdrawn locally")
	}
}

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
	time.Sleep(5 * time.Second) // past the 3 s TTL
	for _, s := range []*testSite{b, c} {
		if got := holderAt(s, "k.example.com"); got != lease.Holder() {
			t.Errorf("after the TTL, %s holds %q, want %s", s.id, got, lease.Holder())
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

// TestExistingTakesAValidPeerCertificate: a certificate a peer holds is
// stored here when it covers the names, is not due for renewal and is newer
// than the one held; otherwise nothing is taken and no error is returned.
func TestExistingTakesAValidPeerCertificate(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, nil, "a", "b", "c")
	a, b := sites["a"], sites["b"]
	now := time.Now()

	if rec, err := a.fleet.Existing(ctx, []string{"none.example.com"}, nil); rec != nil || err != nil {
		t.Errorf("no peer holds one: %v, %v", rec, err)
	}

	// issued certificates last 90 days: one issued 70 days ago has less
	// than a third left, and is due for renewal.
	b.store(t, issued(t, now.Add(-70*24*time.Hour), "due.example.com"))
	if rec, err := a.fleet.Existing(ctx, []string{"due.example.com"}, nil); rec != nil || err != nil {
		t.Errorf("a certificate due for renewal was taken: %v, %v", rec, err)
	}
	// One that lacks a name asked for.
	b.store(t, issued(t, now.Add(-time.Hour), "x.example.com"))
	if rec, err := a.fleet.Existing(ctx, []string{"x.example.com", "y.example.com"}, nil); rec != nil || err != nil {
		t.Errorf("a certificate for other names was taken: %v, %v", rec, err)
	}
	if a.holds("due.example.com", "") || a.holds("x.example.com", "") {
		t.Fatal("a certificate was stored although none was taken")
	}

	// A valid one is taken and stored here, under every name.
	held := b.store(t, issued(t, now.Add(-time.Hour), "v.example.com", "w.example.com"))
	rec, err := a.fleet.Existing(ctx, []string{"v.example.com", "w.example.com"}, nil)
	if err != nil || rec == nil || rec.Fingerprint != held.Fingerprint {
		t.Fatalf("Existing = %+v, %v; want b's certificate", rec, err)
	}
	if !a.holds("w.example.com", held.Fingerprint) {
		t.Error("the certificate taken is not stored under its second name")
	}
	// Renewing it: b's is the one held here, so nothing newer is taken...
	if rec, err := a.fleet.Existing(ctx, []string{"v.example.com", "w.example.com"}, rec); rec != nil || err != nil {
		t.Errorf("the certificate held was taken again: %v, %v", rec, err)
	}
	// ...until c renews it first.
	renewed := sites["c"].store(t, issued(t, now.Add(-time.Minute), "v.example.com", "w.example.com"))
	got, err := a.fleet.Existing(ctx, []string{"v.example.com", "w.example.com"}, held)
	if err != nil || got == nil || got.Fingerprint != renewed.Fingerprint {
		t.Errorf("after c renewed it: %+v, %v; want c's certificate", got, err)
	}

	// A peer that cannot be asked is named in the error when no other has
	// the certificate; then it is known down and not asked until a probe
	// finds it again.
	sites["c"].down()
	if rec, err := a.fleet.Existing(ctx, []string{"nowhere.example.com"}, nil); rec != nil || err == nil ||
		!strings.Contains(err.Error(), "fetching the certificate for nowhere.example.com from c") {
		t.Errorf("with c down: %v, %v; want nothing and an error naming c", rec != nil, err)
	}
	b.store(t, issued(t, now.Add(-time.Hour), "z.example.com"))
	if rec, err := a.fleet.Existing(ctx, []string{"z.example.com"}, nil); rec == nil || err != nil {
		t.Errorf("with c known down: %v, %v; want b's certificate", rec != nil, err)
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

// TestExistingAsksThePeersWhenAllWereSeenDown: when every peer failed its
// last call (this site's own network was down, say), the peers are asked
// all the same before an order: a certificate issued elsewhere meanwhile is
// only there, and the lease that follows would be granted by them.
func TestExistingAsksThePeersWhenAllWereSeenDown(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.ProbeInterval = time.Hour }, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]

	b.down()
	c.down()
	a.fleet.probe(ctx)
	b.up(t)
	c.up(t)
	held := b.store(t, issued(t, time.Now().Add(-time.Hour), "back.example.com"))
	rec, err := a.fleet.Existing(ctx, []string{"back.example.com"}, nil)
	if err != nil || rec == nil || rec.Fingerprint != held.Fingerprint {
		t.Fatalf("Existing = %v, %v; want b's certificate", rec != nil, err)
	}
	if !a.holds("back.example.com", held.Fingerprint) {
		t.Error("b's certificate is not stored at a")
	}
}

// TestTokenPushesTakeThePeerTimeout: the CA client bounds a token's
// publication more tightly than --peer-timeout; a peer that answers within
// the peer timeout still counts toward the token rule.
func TestTokenPushesTakeThePeerTimeout(t *testing.T) {
	watchdog(t, time.Minute)
	sites := startSites(t, func(c *Config) { c.Timeout, c.TokenRule = 5*time.Second, TokenRuleAll }, "a", "b")
	a, b := sites["a"], sites["b"]
	b.api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, PathPrefix+"tokens/") {
			time.Sleep(500 * time.Millisecond) // a slow link
		}
		b.srv.ServeHTTP(w, r)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := a.fleet.Tokens(a.st).PutToken(ctx, "slow.example.com", "tok", "tok.thumb"); err != nil {
		t.Fatalf("b answers within the peer timeout: %v", err)
	}
	if v := b.rdb.Get(context.Background(), b.st.Keys().Token("slow.example.com", "tok")).Val(); v != "tok.thumb" {
		t.Errorf("b holds %q", v)
	}

	// A caller that gives up (the order is cancelled) stops the pushes.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if err := a.fleet.Tokens(a.st).PutToken(ctx, "slow.example.com", "tok2", "tok2.thumb"); err == nil {
		t.Error("a cancelled push succeeded")
	}
}

// TestTokenCleanupSkipsPeersKnownDown: removing a token after validation is
// best effort at the peers (it expires there anyway), so a peer known down
// is not waited for: the order would wait for its timeout after every
// authorization.
func TestTokenCleanupSkipsPeersKnownDown(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.ProbeInterval = time.Hour }, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	tokens := a.fleet.Tokens(a.st)
	if err := tokens.PutToken(ctx, "t.example.com", "tok", "tok.thumb"); err != nil {
		t.Fatal(err)
	}
	c.down()
	a.fleet.probe(ctx)
	c.up(t)
	var deletes atomic.Int64
	c.api.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			deletes.Add(1)
		}
		c.srv.ServeHTTP(w, r)
	})
	if err := tokens.DeleteToken(ctx, "t.example.com", "tok"); err != nil {
		t.Fatal(err)
	}
	if n := deletes.Load(); n != 0 {
		t.Errorf("c, known down, was asked %d times to remove the token", n)
	}
	for _, s := range []*testSite{a, b} {
		if s.rdb.Exists(ctx, s.st.Keys().Token("t.example.com", "tok")).Val() != 0 {
			t.Errorf("site %s still holds the token", s.id)
		}
	}
}
