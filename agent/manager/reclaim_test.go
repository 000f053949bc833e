package manager

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/policy"
	"github.com/certagent/certagent/agent/store"
)

func startReclaimingConsumer(t *testing.T, m *Manager, st *store.Store, name string, idle time.Duration) (stop func()) {
	t.Helper()
	allow, err := policy.ParsePolicy([]string{"*.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	c := NewConsumer(ConsumerConfig{
		Store: st, Manager: m, Policy: allow, Name: name, ReclaimIdle: idle,
		Block: 100 * time.Millisecond, ShutdownGrace: 5 * time.Second, Logger: quietLogger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the consumer did not stop within 30 s of shutdown")
		}
	}
}

// An agent that died after taking entries (they stay pending on its name)
// loses nothing: another agent takes them over once they are idle.
func TestConsumerReclaimsTheEntriesOfADeadAgent(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	if err := st.EnsureGroup(ctx, "certagent"); err != nil {
		t.Fatal(err)
	}
	names := []string{"a.example.com", "b.example.com", "c.example.com"}
	for _, n := range names {
		request(t, r.Client, st, n)
	}
	taken, err := st.ReadRequests(ctx, "certagent", "dead-agent", 10, time.Second, false)
	if err != nil || len(taken) != 3 {
		t.Fatalf("the dead agent took %d entries: %v", len(taken), err)
	}
	stop := startReclaimingConsumer(t, m, st, "live-agent", 300*time.Millisecond)
	defer stop()
	waitFor(t, "all names issued and acknowledged", func() bool {
		for _, n := range names {
			if _, err := st.GetCert(ctx, n); err != nil {
				return false
			}
		}
		return pendingCount(t, r.Client, st) == 0
	})
	if n := issuer.orders.Load(); n != 3 {
		t.Errorf("%d orders for 3 names", n)
	}
}

// A name whose lease another agent holds is not acknowledged and forgotten:
// the entry stays pending, and if the holder dies (its lease runs out) the
// name is ordered after all, once.
func TestConsumerLeavesALeasedNamePendingUntilTheHolderIsGone(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	const name = "held.example.com"
	// A holder that will never release: its lease only expires.
	if _, err := st.AcquireLock(ctx, name, 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	stop := startReclaimingConsumer(t, m, st, "live-agent", 300*time.Millisecond)
	defer stop()
	request(t, r.Client, st, name)
	waitFor(t, "the name issued after the dead holder's lease ran out", func() bool {
		_, err := st.GetCert(ctx, name)
		return err == nil && pendingCount(t, r.Client, st) == 0
	})
	if n := issuer.orders.Load(); n != 1 {
		t.Errorf("%d orders, want 1", n)
	}
}

// pausingIssuer runs during before the order returns, standing in for the
// time an agent is paused while its lease runs out.
type pausingIssuer struct {
	fakeIssuer
	during func()
}

func (p *pausingIssuer) Obtain(ctx context.Context, names []string) (*acmeclient.Certificate, error) {
	cert, err := p.fakeIssuer.Obtain(ctx, names)
	p.during()
	return cert, err
}

// An agent whose lease was taken over while it ordered does not overwrite
// the certificate the newer holder stored.
func TestIssueWithALostLeaseKeepsTheNewerCertificate(t *testing.T) {
	issuer := &pausingIssuer{}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	const name = "paused.example.com"
	var newer *store.CertRecord
	issuer.during = func() {
		r.Client.Del(ctx, st.Keys().Lock(name)) // the lease ran out
		other := New(Config{Store: st, Issuer: &fakeIssuer{}, Logger: quietLogger()})
		var err error
		if newer, err = other.Issue(ctx, []string{name}); err != nil {
			t.Errorf("the other agent's order: %v", err)
		}
	}
	_, err := m.Issue(ctx, []string{name})
	if !errors.Is(err, store.ErrFenced) {
		t.Fatalf("the paused agent's write: %v, want ErrFenced", err)
	}
	got, err := st.GetCert(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if newer == nil || got.Fingerprint != newer.Fingerprint {
		t.Error("the stored certificate is not the newer holder's")
	}
}

// An order whose certificate cannot be written because Redis went away is
// ErrInterrupted, not a failure of the name: the consumer leaves its entry
// pending for another try.
func TestIssueWithRedisGoneIsInterrupted(t *testing.T) {
	issuer := &pausingIssuer{}
	m, _, r := newTestManager(t, issuer)
	issuer.during = r.Stop
	_, err := m.Issue(context.Background(), []string{"gone.example.com"})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("write with Redis down: %v, want ErrInterrupted", err)
	}
	r.Start()
}
