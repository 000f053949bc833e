package manager

import (
	"context"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// A certificate written by someone else (an import, a peer site) while the
// scheduler sleeps with an hour's Interval is looked at within seconds:
// its renewal state is written and its schedule entry moves to its
// renewal time.
func TestRenewerLooksAtAWrittenCertificateAtOnce(t *testing.T) {
	issuer := &fakeIssuer{lifetime: 90 * 24 * time.Hour}
	m, st, _ := newTestManager(t, issuer)
	ctx := context.Background()
	r := NewRenewer(RenewerConfig{Manager: m, Interval: time.Hour})
	defer runRenewer(r)()
	// The scheduler's first look (an empty schedule) is over, it sleeps.
	time.Sleep(300 * time.Millisecond)

	const name = "imported.example.com"
	leaf := testenv.NewCert(t, testenv.CertSpec{CommonName: name, DNSNames: []string{name},
		NotAfter: time.Now().Add(60 * 24 * time.Hour)})
	rec, err := store.NewCertRecord(leaf.CertPEM, leaf.KeyPEM, name)
	if err != nil {
		t.Fatal(err)
	}
	rec.IssuedAt = time.Now()
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		next, err := st.NextRenewals(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(next) == 1 && next[0].NotAfter.After(time.Now().Add(24*time.Hour)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the written certificate was not looked at within 10 s (schedule %v)", next)
		}
	}
	if issuer.orders.Load() != 0 {
		t.Errorf("%d orders for a certificate not due", issuer.orders.Load())
	}
}

// Stopping is not held by the wait on the stream of changes.
func TestRenewerStopsWhileWaitingForChanges(t *testing.T) {
	m, _, _ := newTestManager(t, &fakeIssuer{lifetime: time.Hour})
	r := NewRenewer(RenewerConfig{Manager: m, Interval: time.Hour})
	stop := runRenewer(r)
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	stop()
	if took := time.Since(start); took > 3*changeBlock {
		t.Errorf("stopping took %v", took)
	}
}

// runRenewer runs r until the returned function, which returns once Run
// has.
func runRenewer(r *Renewer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}
