package manager

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// storeDueCert stores a certificate of its own for name, 80 of its 90 days
// gone, scheduled for renewal at due.
func storeDueCert(t *testing.T, st *store.Store, name string, due time.Time) *store.CertRecord {
	t.Helper()
	c := testenv.NewCert(t, testenv.CertSpec{CommonName: name, DNSNames: []string{name},
		NotBefore: time.Now().Add(-80 * 24 * time.Hour), NotAfter: time.Now().Add(10 * 24 * time.Hour)})
	rec, err := store.NewCertRecord(c.CertPEM, c.KeyPEM, name)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ScheduleMissing(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := st.Reschedule(ctx, name, due); err != nil {
		t.Fatal(err)
	}
	return rec
}

// A renewal whose request the CA never answers holds one worker until the
// request times out, and nothing else: the renewals due after it go on
// with the other workers meanwhile, and once the request times out the
// hung renewal lets go of its lease and its order slot and is retried; it
// goes through when the CA answers again.
func TestAHungCARequestDoesNotStallTheRenewals(t *testing.T) {
	s := startCAStack(t)
	proxy := testenv.StartCAProxy(t, s.pebble)
	t.Cleanup(proxy.ClearFaults)
	client, err := acmeclient.New(context.Background(), acmeclient.Config{
		DirectoryURL: proxy.DirectoryURL, Email: "ops@example.test", CARootFiles: []string{proxy.CARootsFile},
	}, s.st, acmeclient.NewHTTP01Provider(s.st, 0))
	if err != nil {
		t.Fatal(err)
	}
	conc := NewConcurrency(ConcurrencyConfig{Logger: quietLogger()})
	m := New(Config{Store: s.st, Issuer: client, Logger: quietLogger(), Concurrency: conc})

	// The hung name is due first, so it is in the first look at the
	// schedule, which takes two names: the other renewals need the looks
	// after it.
	const hung = "hung.renew.example.test"
	before := map[string]string{hung: storeDueCert(t, s.st, hung, time.Now().Add(-time.Hour)).Fingerprint}
	var others []string
	for i := range 5 {
		name := fmt.Sprintf("r%d.renew.example.test", i)
		before[name] = storeDueCert(t, s.st, name, time.Now().Add(-time.Minute)).Fingerprint
		others = append(others, name)
	}
	proxy.Inject(testenv.Fault{Kind: testenv.FaultHang, Path: testenv.PathNewOrder, Names: []string{hung}})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	r := NewRenewer(RenewerConfig{Manager: m, Workers: 4, Batch: 2, RetryBase: time.Second, Interval: time.Second})
	go func() { _ = r.Run(ctx); done <- struct{}{} }()
	go func() { m.WatchCAs(ctx, time.Second); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })

	renewed := func(name string) bool {
		rec, err := s.st.GetCert(context.Background(), name)
		return err == nil && rec.Fingerprint != before[name]
	}
	waitFor(t, "the other renewals, while the CA holds the hung request", func() bool {
		for _, name := range others {
			if !renewed(name) {
				return false
			}
		}
		return true
	})
	if proxy.Hung() != 1 || renewed(hung) {
		t.Fatalf("the hung request is held %d times and renewed=%v: the renewals did not overlap it", proxy.Hung(), renewed(hung))
	}

	// The request times out (acmeclient.ResponseHeaderTimeout): the
	// renewal gives its lease back and is tried again, which reaches the CA
	// only with the lease free.
	testenv.WaitFor(t, acmeclient.ResponseHeaderTimeout+20*time.Second, "the hung renewal tried again", func() bool {
		return proxy.Faulted(testenv.FaultHang) >= 2
	})
	proxy.ClearFaults()
	testenv.WaitFor(t, 60*time.Second, "the hung name renewed once the CA answers", func() bool { return renewed(hung) })
	waitFor(t, "every order slot given back", func() bool { return conc.Running() == 0 })
	// The certificate is written under the lease, which is released right
	// after.
	waitFor(t, "the lease on "+hung+" given back", func() bool {
		lock, err := s.st.AcquireLock(context.Background(), hung, time.Minute)
		if err != nil {
			return false
		}
		_ = lock.Release(context.Background())
		return true
	})
}
