package manager

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/clock"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// fakeIssuer signs certificates itself; the real CA is exercised by the
// end-to-end tests.
type fakeIssuer struct {
	lifetime time.Duration
	delay    time.Duration
	fail     error
	orders   atomic.Int64
	mu       sync.Mutex
	ordered  []string
}

func (f *fakeIssuer) DirectoryURL() string { return "https://fake-ca/dir" }

func (f *fakeIssuer) Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error) {
	f.orders.Add(1)
	f.mu.Lock()
	f.ordered = append(f.ordered, names[0])
	f.mu.Unlock()
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.fail != nil {
		return nil, f.fail
	}
	lifetime := f.lifetime
	if lifetime == 0 {
		lifetime = 90 * 24 * time.Hour
	}
	now := time.Now()
	cert, err := testenv.MakeCert(testenv.CertSpec{CommonName: names[0], DNSNames: names,
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(lifetime)})
	if err != nil {
		return nil, err
	}
	return &acmeclient.Certificate{
		FullChain: cert.CertPEM,
		KeyPEM:    cert.KeyPEM,
		CertURL:   "https://fake-ca/cert/" + names[0],
		KeyType:   "ec256",
	}, nil
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestManager(t *testing.T, issuer Issuer) (*Manager, *store.Store, *testenv.Redis) {
	t.Helper()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	return New(Config{Store: st, Issuer: issuer, Logger: quietLogger()}), st, r
}

func TestIssueStoresAndReleases(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	rec, err := m.Issue(ctx, []string{"a.example.com", "b.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.CA != "https://fake-ca/dir" || rec.KeyType != "ec256" || rec.CertURL == "" || rec.IssuedAt.IsZero() {
		t.Errorf("record metadata: %+v", rec)
	}
	for _, name := range []string{"a.example.com", "b.example.com"} {
		got, err := st.GetCert(ctx, name)
		if err != nil || got.Fingerprint != rec.Fingerprint {
			t.Errorf("%s: %v %v", name, got, err)
		}
	}
	if n := r.Client.Exists(ctx, st.Keys().Lock("a.example.com")).Val(); n != 0 {
		t.Error("the lease is still held after the order")
	}
	need, err := m.NeedsCertificate(ctx, "b.example.com")
	if err != nil || need {
		t.Errorf("NeedsCertificate right after issuance = %v, %v", need, err)
	}
}

func TestIssueFailureReleasesTheLease(t *testing.T) {
	issuer := &fakeIssuer{fail: errors.New("CA says no")}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	if _, err := m.Issue(ctx, []string{"a.example.com"}); err == nil {
		t.Fatal("want the CA's error")
	}
	if n := r.Client.Exists(ctx, st.Keys().Lock("a.example.com")).Val(); n != 0 {
		t.Error("the lease is still held after a failed order")
	}
	if _, err := st.GetCert(ctx, "a.example.com"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a failed order stored something: %v", err)
	}
}

func TestIssueLeavesANameLockedElsewhere(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, _ := newTestManager(t, issuer)
	ctx := context.Background()
	if _, err := st.AcquireLock(ctx, "a.example.com", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Issue(ctx, []string{"a.example.com"}); !errors.Is(err, store.ErrLockHeld) {
		t.Errorf("Issue with the lease held elsewhere: %v, want ErrLockHeld", err)
	}
	if issuer.orders.Load() != 0 {
		t.Error("ordered although another agent holds the lease")
	}
}

func TestNeedsCertificate(t *testing.T) {
	m, st, r := newTestManager(t, &fakeIssuer{})
	ctx := context.Background()
	need := func(name string) bool {
		t.Helper()
		n, err := m.NeedsCertificate(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if !need("a.example.com") {
		t.Error("no certificate stored: want needed")
	}
	// In the last third of its lifetime a certificate is due.
	short := New(Config{Store: st, Issuer: &fakeIssuer{lifetime: time.Hour}, Logger: quietLogger()})
	if _, err := short.Issue(ctx, []string{"due.example.com"}); err != nil {
		t.Fatal(err)
	}
	m.cfg.Clock = fixedClock(time.Now().Add(45 * time.Minute))
	if !need("due.example.com") {
		t.Error("certificate with a quarter of its life left: want needed")
	}
	m.cfg.Clock = clock.System{}
	if need("due.example.com") {
		t.Error("fresh certificate: want not needed")
	}
	// A wildcard covers the names below its parent.
	if _, err := m.Issue(ctx, []string{"*.wild.example.com"}); err != nil {
		t.Fatal(err)
	}
	if need("x.wild.example.com") {
		t.Error("covered by *.wild.example.com: want not needed")
	}
	if !need("wild.example.com") {
		t.Error("the wildcard does not cover its parent")
	}
	// A corrupt record is replaced, not trusted.
	r.Client.HSet(ctx, st.Keys().Cert("corrupt.example.com"), "not_after", "x")
	if !need("corrupt.example.com") {
		t.Error("corrupt record: want needed")
	}
}

type fixedClock time.Time

func (c fixedClock) Now() time.Time { return time.Time(c) }
