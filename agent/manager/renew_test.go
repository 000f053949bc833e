package manager

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// manualClock is a Clock the test moves.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *manualClock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

// ariIssuer is a fakeIssuer at another directory URL that offers renewal
// windows and records the options of each order.
type ariIssuer struct {
	fakeIssuer
	url    string
	window *acmeclient.RenewalWindow
	mu2    sync.Mutex
	opts   []acmeclient.OrderOptions
	ca     *testenv.Cert

	infoCalls atomic.Int64
	windowFor func(chain []byte) *acmeclient.RenewalWindow // overrides window
}

func (a *ariIssuer) DirectoryURL() string { return a.url }

func (a *ariIssuer) ObtainWith(ctx context.Context, names []string, opts acmeclient.OrderOptions) (*acmeclient.Certificate, error) {
	a.mu2.Lock()
	a.opts = append(a.opts, opts)
	a.mu2.Unlock()
	got, err := a.fakeIssuer.Obtain(ctx, names)
	if err != nil {
		return nil, err
	}
	// Signed by a CA, so the leaf has the authority key id ARI needs.
	a.mu2.Lock()
	defer a.mu2.Unlock()
	if a.ca == nil {
		if a.ca, err = testenv.MakeCert(testenv.CertSpec{CommonName: "fake issuing CA", IsCA: true}); err != nil {
			return nil, err
		}
	}
	leaf, _ := pem.Decode(got.FullChain)
	parsed, err := x509.ParseCertificate(leaf.Bytes)
	if err != nil {
		return nil, err
	}
	signed, err := testenv.MakeCert(testenv.CertSpec{CommonName: names[0], DNSNames: names, Parent: a.ca,
		NotBefore: parsed.NotBefore, NotAfter: parsed.NotAfter})
	if err != nil {
		return nil, err
	}
	got.FullChain, got.KeyPEM = append(signed.CertPEM, a.ca.CertPEM...), signed.KeyPEM
	return got, nil
}

func (a *ariIssuer) RenewalInfo(_ context.Context, chain []byte) (*acmeclient.RenewalWindow, error) {
	a.infoCalls.Add(1)
	if a.windowFor != nil {
		return a.windowFor(chain), nil
	}
	if a.window == nil {
		return nil, acmeclient.ErrNoARI
	}
	w := *a.window
	return &w, nil
}

type renewFixture struct {
	st    *store.Store
	rdb   redis.UniversalClient // the store's Redis, for what a test breaks on purpose
	m     *Manager
	r     *Renewer
	clock *manualClock
	logs  *bytes.Buffer
}

func newRenewFixture(t *testing.T, issuer Issuer, fallbacks ...Issuer) *renewFixture {
	t.Helper()
	_, st, r := newTestManager(t, issuer)
	f := &renewFixture{st: st, rdb: r.Client, clock: &manualClock{now: time.Now()}, logs: &bytes.Buffer{}}
	log := slog.New(slog.NewTextHandler(&syncWriter{w: f.logs}, nil))
	f.m = New(Config{Store: st, Issuer: issuer, Fallbacks: fallbacks, Logger: log, Clock: f.clock})
	f.r = NewRenewer(RenewerConfig{Manager: f.m, RetryBase: time.Minute, RetryMax: time.Hour})
	return f
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (f *renewFixture) pass(t *testing.T) int {
	t.Helper()
	n, err := f.r.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The pass's renewals have ended: none may still hold its name, or the
	// next pass skips the name although it is due.
	f.r.inFlight.mu.Lock()
	defer f.r.inFlight.mu.Unlock()
	if len(f.r.inFlight.keys) != 0 {
		t.Fatalf("names still claimed after the pass returned: %v", f.r.inFlight.keys)
	}
	return n
}

func (f *renewFixture) state(t *testing.T, name string) *store.RenewalState {
	t.Helper()
	s, err := f.st.GetRenewal(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *renewFixture) scheduled(t *testing.T, name string) time.Time {
	t.Helper()
	next, err := f.st.NextRenewals(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range next {
		if e.Name == name {
			return e.NotAfter
		}
	}
	t.Fatalf("%s is not in the renewal schedule", name)
	return time.Time{}
}

func TestRenewerLifetimeRuleWithoutARI(t *testing.T) {
	issuer := &fakeIssuer{lifetime: 90 * time.Minute}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	first, err := f.m.Issue(ctx, []string{"a.example.com", "www.a.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if n := f.pass(t); n != 1 {
		t.Fatalf("first pass looked at %d names, want the new certificate", n)
	}
	lifetime := first.NotAfter.Sub(first.NotBefore)
	third := first.NotAfter.Add(-lifetime / 3)
	st := f.state(t, "a.example.com")
	if st.RenewAt.After(third) || st.RenewAt.Before(third.Add(-lifetime/30-time.Second)) {
		t.Errorf("renew at %s, want within a thirtieth of the lifetime before %s", st.RenewAt, third)
	}
	if !st.WindowStart.IsZero() {
		t.Errorf("a window without ARI: %+v", st)
	}
	if got := f.scheduled(t, "a.example.com"); !got.Equal(st.RenewAt.Truncate(time.Second)) {
		t.Errorf("scheduled at %s, want the renewal time %s", got, st.RenewAt)
	}
	if n := f.pass(t); n != 0 || issuer.orders.Load() != 1 {
		t.Errorf("a pass before the renewal time looked at %d names and ordered %d times", n, issuer.orders.Load())
	}

	f.clock.Set(st.RenewAt.Add(time.Second))
	if n := f.pass(t); n != 1 {
		t.Fatalf("pass at the renewal time looked at %d names", n)
	}
	renewed, err := f.st.GetCert(ctx, "www.a.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Fingerprint == first.Fingerprint || issuer.orders.Load() != 2 {
		t.Fatalf("not renewed: %d orders", issuer.orders.Load())
	}
	if strings.Join(renewed.Names, ",") != "a.example.com,www.a.example.com" {
		t.Errorf("renewed names %v: want the same SAN set, primary first", renewed.Names)
	}
	if n := f.rdb.Exists(ctx, f.st.Keys().Lock("a.example.com")).Val(); n != 0 {
		t.Error("the lease is held after the renewal")
	}
}

func TestRenewerFailureKeepsTheCertificateAndBacksOff(t *testing.T) {
	issuer := &fakeIssuer{lifetime: 90 * time.Minute}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	first, err := f.m.Issue(ctx, []string{"b.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	f.pass(t)
	renewAt := f.state(t, "b.example.com").RenewAt
	issuer.fail = errors.New("CA down")

	now := renewAt.Add(time.Second)
	var pauses []time.Duration
	for i := 1; i <= 3; i++ {
		f.clock.Set(now)
		if n := f.pass(t); n != 1 {
			t.Fatalf("attempt %d: looked at %d names", i, n)
		}
		st := f.state(t, "b.example.com")
		if st.Failures != i || !strings.Contains(st.LastError, "CA down") {
			t.Fatalf("attempt %d: state %+v", i, st)
		}
		rec, err := f.st.GetCert(ctx, "b.example.com")
		if err != nil || rec.Fingerprint != first.Fingerprint {
			t.Fatalf("attempt %d: the current certificate is no longer stored: %v", i, err)
		}
		next := f.scheduled(t, "b.example.com")
		pauses = append(pauses, next.Sub(now.Truncate(time.Second)))
		if n := f.pass(t); n != 0 {
			t.Fatalf("retried before the pause was over")
		}
		now = next.Add(time.Second)
	}
	if pauses[0] != time.Minute || pauses[1] != 2*time.Minute || pauses[2] != 4*time.Minute {
		t.Errorf("pauses %v, want 1m 2m 4m", pauses)
	}
	if !strings.Contains(f.logs.String(), "renewal failed; the current certificate is still served") {
		t.Errorf("no warning logged:\n%s", f.logs)
	}

	// Past expiry: still stored, retried, and logged as an error.
	f.clock.Set(first.NotAfter.Add(time.Minute))
	f.pass(t)
	if _, err := f.st.GetCert(ctx, "b.example.com"); err != nil {
		t.Fatalf("the expired certificate was removed: %v", err)
	}
	if !strings.Contains(f.logs.String(), "level=ERROR msg=\"certificate EXPIRED") {
		t.Errorf("expiry not logged as an error:\n%s", f.logs)
	}

	// Once the CA is back, the next retry renews and resets the state.
	issuer.fail = nil
	f.clock.Set(f.scheduled(t, "b.example.com").Add(time.Second))
	f.pass(t)
	rec, _ := f.st.GetCert(ctx, "b.example.com")
	if rec.Fingerprint == first.Fingerprint {
		t.Fatal("not renewed after the CA came back")
	}
	if st := f.state(t, "b.example.com"); st.Failures != 0 {
		t.Errorf("failures %d after a successful renewal", st.Failures)
	}
}

// A CA that is down is not the certificate's failure: the renewal is tried
// again after the first pause every time, with no failure counted, and
// renews as soon as the CA answers.
func TestRenewerWaitsOutACAOutageWithoutBackoff(t *testing.T) {
	issuer := &fakeIssuer{lifetime: 90 * time.Minute}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	first, err := f.m.Issue(ctx, []string{"outage.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	f.pass(t)
	issuer.fail = &acmeclient.OutageError{Reason: "CA unreachable: connection refused at https://ca.example.test/dir"}

	now := f.state(t, "outage.example.com").RenewAt.Add(time.Second)
	for i := 1; i <= 3; i++ {
		f.clock.Set(now)
		if n := f.pass(t); n != 1 {
			t.Fatalf("attempt %d: looked at %d names", i, n)
		}
		if st := f.state(t, "outage.example.com"); st.Failures != 0 {
			t.Fatalf("attempt %d: %d failures counted for a CA outage", i, st.Failures)
		}
		next := f.scheduled(t, "outage.example.com")
		if pause := next.Sub(now.Truncate(time.Second)); pause != time.Minute {
			t.Fatalf("attempt %d: retried after %s, want the first pause (1m) every time", i, pause)
		}
		now = next.Add(time.Second)
	}
	if !strings.Contains(f.logs.String(), "renewal waits for the CA") {
		t.Errorf("the wait was not logged:\n%s", f.logs)
	}

	// The CA answers again: the agents' probe clears the fleet's record of
	// the outage (Manager.WatchCAs), and the next due renewal goes through.
	issuer.fail = nil
	if err := f.st.ClearCADown(ctx, issuer.DirectoryURL()); err != nil {
		t.Fatal(err)
	}
	f.clock.Set(now)
	f.pass(t)
	if rec, _ := f.st.GetCert(ctx, "outage.example.com"); rec.Fingerprint == first.Fingerprint {
		t.Fatal("not renewed once the CA answered")
	}
}

func TestRenewerHonoursTheCAWindowAndSendsReplaces(t *testing.T) {
	issuer := &ariIssuer{url: "https://ari-ca/dir"}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	first, err := f.m.Issue(ctx, []string{"c.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	// A window far from the lifetime rule's third: only ARI puts it there.
	now := f.clock.Now()
	issuer.window = &acmeclient.RenewalWindow{Start: now.Add(10 * time.Minute), End: now.Add(20 * time.Minute), RetryAfter: 3 * time.Hour}
	f.pass(t)
	st := f.state(t, "c.example.com")
	// The state keeps whole seconds: a time picked in the window's first
	// second reads as the second the window starts in.
	if st.RenewAt.Before(issuer.window.Start.Truncate(time.Second)) || !st.RenewAt.Before(issuer.window.End) {
		t.Errorf("renew at %s, want in the window %s..%s", st.RenewAt, issuer.window.Start, issuer.window.End)
	}
	if !st.WindowStart.Equal(issuer.window.Start.Truncate(time.Second)) || !st.ARINext.Equal(now.Add(3*time.Hour).Truncate(time.Second)) {
		t.Errorf("state %+v: want the window and the next check after Retry-After", st)
	}
	f.clock.Set(st.RenewAt.Add(time.Second))
	f.pass(t)
	if issuer.orders.Load() != 2 {
		t.Fatalf("%d orders, want the renewal", issuer.orders.Load())
	}
	id, err := acmeclient.CertID([]byte(first.FullChain))
	if err != nil {
		t.Fatal(err)
	}
	if got := issuer.opts[len(issuer.opts)-1].Replaces; got != id {
		t.Errorf("renewal order replaces %q, want %q", got, id)
	}
	if issuer.opts[0].Replaces != "" {
		t.Error("the first order claimed to replace something")
	}
}

func TestRenewNameForceAndSecondaryNames(t *testing.T) {
	issuer := &fakeIssuer{}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	if _, err := f.m.Issue(ctx, []string{"d.example.com", "www.d.example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, out, err := f.r.RenewName(ctx, "www.d.example.com", false); err != nil || out != NotDue {
		t.Errorf("fresh certificate: %s, %v", out, err)
	}
	rec, out, err := f.r.RenewName(ctx, "www.d.example.com", true)
	if err != nil || out != Renewed || rec.Primary() != "d.example.com" {
		t.Errorf("forced renewal through a secondary name: %s, %v", out, err)
	}
	if _, _, err := f.r.RenewName(ctx, "none.example.com", true); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown name: %v", err)
	}
	// Held elsewhere: left to the holder, nothing ordered.
	lock, err := f.st.AcquireLock(ctx, "d.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release(ctx)
	before := issuer.orders.Load()
	if _, out, err := f.r.RenewName(ctx, "d.example.com", true); err != nil || out != RenewedElsewhere || issuer.orders.Load() != before {
		t.Errorf("lease held elsewhere: %s, %v, %d orders", out, err, issuer.orders.Load()-before)
	}
}

func TestIssueFallsBackToTheNextCA(t *testing.T) {
	down := &ariIssuer{url: "https://down-ca/dir"}
	down.fail = errors.New("503")
	up := &ariIssuer{url: "https://up-ca/dir"}
	f := newRenewFixture(t, down, up)
	rec, err := f.m.Issue(context.Background(), []string{"e.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.CA != "https://up-ca/dir" || down.orders.Load() != 1 || up.orders.Load() != 1 {
		t.Errorf("stored CA %q, orders %d/%d", rec.CA, down.orders.Load(), up.orders.Load())
	}
	both := &ariIssuer{url: "https://also-down/dir"}
	both.fail = errors.New("also 503")
	f2 := newRenewFixture(t, down, both)
	_, err = f2.m.Issue(context.Background(), []string{"f.example.com"})
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "also 503") {
		t.Errorf("error %v: want both CAs' errors", err)
	}
	// A renewal goes to the CA that is up, without replaces (another CA's id means nothing there).
	f.clock.Set(rec.NotAfter)
	down.fail = nil
	if _, out, err := f.r.RenewName(context.Background(), "e.example.com", true); err != nil || out != Renewed {
		t.Fatalf("renewal: %s %v", out, err)
	}
	if got := down.opts[len(down.opts)-1].Replaces; got != "" {
		t.Errorf("replaces %q sent to a CA that did not issue the certificate", got)
	}
}

// endingIssuer counts the orders that have returned.
type endingIssuer struct {
	*fakeIssuer
	ended atomic.Int64
}

func (e *endingIssuer) Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error) {
	defer e.ended.Add(1)
	return e.fakeIssuer.Obtain(ctx, names)
}

func TestRenewerRunStopsWhenItsContextEnds(t *testing.T) {
	issuer := &endingIssuer{fakeIssuer: &fakeIssuer{lifetime: time.Hour}}
	_, st, _ := newTestManager(t, issuer)
	m := New(Config{Store: st, Issuer: issuer, Logger: quietLogger()})
	ctx := context.Background()
	rec, err := m.Issue(ctx, []string{"g.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	// From now on an order takes half a second: the renewal below is still
	// running when Run's context ends, and cancelled after its grace.
	issuer.delay = 500 * time.Millisecond
	// Renewal is due at once under a clock three quarters into the lifetime;
	// a failed one is tried again after RetryBase.
	r := NewRenewer(RenewerConfig{Manager: m, Clock: fixedClock(rec.NotAfter.Add(-15 * time.Minute)),
		Interval: 50 * time.Millisecond, RetryBase: 10 * time.Millisecond, ShutdownGrace: 100 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	stopped := make(chan error, 1)
	go func() { stopped <- r.Run(runCtx) }()
	deadline := time.Now().Add(10 * time.Second)
	for issuer.orders.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the running scheduler did not renew a due certificate")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Run returns once the running renewal is cancelled after the grace ...
	stop()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return: the running renewal was not cancelled after the grace")
	}
	if started, ended := issuer.orders.Load(), issuer.ended.Load(); ended != started {
		t.Errorf("Run returned with %d of %d renewals still running", started-ended, started)
	}
	// ... and nothing runs after it: a certificate stored now (by another
	// agent) is as due as the first, and a live scheduler would see it
	// within its Interval and renew it.
	other := New(Config{Store: st, Issuer: &fakeIssuer{lifetime: time.Hour}, Logger: quietLogger()})
	orders := issuer.orders.Load()
	if _, err := other.Issue(ctx, []string{"h.example.com"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * (50 * time.Millisecond))
	if n := issuer.orders.Load(); n != orders {
		t.Errorf("%d orders after Run returned, want none", n-orders)
	}
}

// TestRenewalPathsNeverScanKeys runs the scheduler's start (schedule fill),
// passes that renew due certificates, and the reads of status and list, then
// asks Redis whether KEYS or SCAN ever ran.
func TestRenewalPathsNeverScanKeys(t *testing.T) {
	issuer := &fakeIssuer{lifetime: time.Hour}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	for i := range 50 {
		if _, err := f.m.Issue(ctx, []string{"n" + strconv.Itoa(i) + ".example.com"}); err != nil {
			t.Fatal(err)
		}
	}
	rdb := f.rdb
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.ScheduleMissing(ctx, f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	f.pass(t) // choose renewal times
	f.clock.Set(f.clock.Now().Add(50 * time.Minute))
	for f.pass(t) == int(f.r.cfg.Batch) {
	}
	if issuer.orders.Load() != 100 {
		t.Fatalf("%d orders, want the 50 renewals too", issuer.orders.Load())
	}
	if _, err := f.st.NextRenewals(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.FailingRenewals(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.st.CertCounts(ctx, f.clock.Now().Unix()); err != nil {
		t.Fatal(err)
	}
	// The periodic check (and list and status, which walk the same way).
	if _, err := NewChecker(CheckerConfig{Store: f.st, Logger: quietLogger()}).Pass(ctx); err != nil {
		t.Fatal(err)
	}
	stats, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stats, "cmdstat_zrange") {
		t.Fatalf("commandstats shows no ZRANGE; is it counting?\n%s", stats)
	}
	for _, cmd := range []string{"cmdstat_keys:", "cmdstat_scan:"} {
		if strings.Contains(stats, cmd) {
			t.Errorf("%s ran on a renewal path:\n%s", strings.TrimSuffix(cmd, ":"), stats)
		}
	}
}

func TestRenewalWaitsForTheRateBudgets(t *testing.T) {
	issuer := &fakeIssuer{}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	budgets, err := NewBudgets(f.m, BudgetConfig{Account: "acct", OrdersPerAccount: 2, OrdersWindow: time.Hour, CertsPerDomain: 100})
	if err != nil {
		t.Fatal(err)
	}
	f.r = NewRenewer(RenewerConfig{Manager: f.m, Budgets: budgets})
	for _, name := range []string{"h1.example.com", "h2.example.com"} {
		if _, err := budgets.Issue(ctx, []string{name}, PriorityRenewal); err != nil {
			t.Fatal(err)
		}
	}
	rec, out, err := f.r.RenewName(ctx, "h1.example.com", true)
	if err != nil || out != Deferred {
		t.Fatalf("renewal with the order budget spent: %s, %v", out, err)
	}
	st := f.state(t, "h1.example.com")
	if st.Failures != 0 || issuer.orders.Load() != 2 {
		t.Errorf("a deferral counted as a failure (%d) or ordered (%d orders)", st.Failures, issuer.orders.Load())
	}
	if next := f.scheduled(t, "h1.example.com"); !next.After(f.clock.Now()) {
		t.Errorf("deferred renewal scheduled at %s, want after now", next)
	}
	if cur, _ := f.st.GetCert(ctx, "h1.example.com"); cur.Fingerprint != rec.Fingerprint {
		t.Error("the certificate changed although the renewal was deferred")
	}
}

func TestAStaleScheduleEntryOfASecondaryNameIsDropped(t *testing.T) {
	issuer := &fakeIssuer{}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	if _, err := f.m.Issue(ctx, []string{"p.example.com", "s.example.com"}); err != nil {
		t.Fatal(err)
	}
	// As if s.example.com had been the primary name of an earlier certificate.
	f.rdb.ZAdd(ctx, f.st.Keys().Renewals(), redis.Z{Score: 0, Member: "s.example.com"})
	f.pass(t)
	if n := f.pass(t); n != 0 {
		t.Errorf("%d names still due after a pass; the secondary name's entry must go", n)
	}
	if got := f.scheduled(t, "p.example.com"); got.IsZero() {
		t.Error("the primary name lost its place")
	}
}

// Two agents passing over the same schedule at the same time look at each
// due certificate once between them: one question to the CA per certificate,
// one renewal per certificate.
func TestTwoAgentsShareTheDueCertificates(t *testing.T) {
	issuer := &ariIssuer{url: "https://ari-ca/dir"}
	f := newRenewFixture(t, issuer)
	ctx := context.Background()
	first := map[string]bool{}
	for i := range 20 {
		rec, err := f.m.Issue(ctx, []string{"share" + strconv.Itoa(i) + ".example.com"})
		if err != nil {
			t.Fatal(err)
		}
		first[rec.FullChain] = true
	}
	now := f.clock.Now().Add(time.Minute)
	f.clock.Set(now)
	// The CA wants the first certificates replaced now, their successors later.
	var firstAsked atomic.Int64
	issuer.windowFor = func(chain []byte) *acmeclient.RenewalWindow {
		if first[string(chain)] {
			firstAsked.Add(1)
			return &acmeclient.RenewalWindow{Start: now.Add(-2 * time.Hour), End: now.Add(-time.Hour)}
		}
		return &acmeclient.RenewalWindow{Start: now.Add(time.Hour), End: now.Add(2 * time.Hour)}
	}
	other := NewRenewer(RenewerConfig{Manager: f.m})
	var wg sync.WaitGroup
	for _, r := range []*Renewer{f.r, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.Pass(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// Each first certificate is looked at (and the CA asked) once; without
	// the claim both agents would look at most of them. (A successor stored
	// during the pass may be looked at by the other agent: it is due too.)
	if n := firstAsked.Load(); n != 20 {
		t.Errorf("%d renewal information requests for the 20 first certificates, want one each", n)
	}
	if n := issuer.orders.Load(); n != 40 {
		t.Errorf("%d orders, want 20 issuances and 20 renewals", n)
	}
}

// A read of the schedule cut short by shutdown is not a failure: nothing
// is logged (it used to log "filling the renewal schedule failed ...
// context canceled" at every SIGTERM during start-up).
func TestRenewerWaitIsQuietWhenShuttingDown(t *testing.T) {
	f := newRenewFixture(t, &fakeIssuer{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.r.cfg.Logger = slog.New(slog.NewTextHandler(&syncWriter{w: f.logs}, nil))
	f.r.wait(ctx, time.Hour, "filling the renewal schedule", ctx.Err())
	f.r.wait(context.Background(), time.Millisecond, "reading the renewal schedule", errors.New("redis down"))
	if logs := f.logs.String(); strings.Contains(logs, "filling") || !strings.Contains(logs, "reading the renewal schedule failed") {
		t.Errorf("logged:\n%s\nwant only the real failure", logs)
	}
}

// When Run's context ends a renewal still waiting for a free order slot (Concurrency)
// does not start in the grace, and is not counted as the certificate's
// failure.
func TestRenewerStopStartsNoWaitingRenewal(t *testing.T) {
	issuer := &fakeIssuer{lifetime: time.Hour}
	_, st, _ := newTestManager(t, issuer)
	slots := NewConcurrency(ConcurrencyConfig{Fixed: 1, Logger: quietLogger()})
	m := New(Config{Store: st, Issuer: issuer, Logger: quietLogger(), Concurrency: slots})
	ctx := context.Background()
	rec, err := m.Issue(ctx, []string{"w.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	held, err := slots.Acquire(ctx) // every slot taken, as by running orders
	if err != nil {
		t.Fatal(err)
	}
	r := NewRenewer(RenewerConfig{Manager: m, Clock: fixedClock(rec.NotAfter.Add(-15 * time.Minute)),
		Interval: 50 * time.Millisecond, ShutdownGrace: 10 * time.Second, Logger: quietLogger()})
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	waitFor(t, "the renewal to wait for a slot", func() bool {
		slots.mu.Lock()
		defer slots.mu.Unlock()
		return len(slots.waiting) == 1
	})
	stop()
	time.Sleep(200 * time.Millisecond)
	held(nil) // the running order ends during the grace
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	if n := issuer.orders.Load(); n != 1 {
		t.Errorf("%d orders, want 1 (the issuance): the waiting renewal started during the grace", n)
	}
	state, err := st.GetRenewal(ctx, "w.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if state.Failures != 0 {
		t.Errorf("the renewal cut by shutdown counted as failure %d: %s", state.Failures, state.LastError)
	}
}
