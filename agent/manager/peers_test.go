package manager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/store"
	"github.com/certagent/certagent/agent/telemetry"
)

// fakePeers plays the other sites: it may hold a certificate, refuse the
// lease, or lose it during the order.
type fakePeers struct {
	mu       sync.Mutex
	existing *store.CertRecord
	refuse   error
	lose     error
	leases   int
	released int
	calls    []string
}

func (f *fakePeers) Existing(ctx context.Context, names []string, have *store.CertRecord) (*store.CertRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "existing")
	return f.existing, nil
}

func (f *fakePeers) Lease(ctx context.Context, name string) (PeerLease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "lease")
	if f.refuse != nil {
		return nil, f.refuse
	}
	f.leases++
	return &fakeLease{peers: f}, nil
}

type fakeLease struct{ peers *fakePeers }

func (l *fakeLease) KeepAlive(ctx context.Context, lost func(error)) {
	if l.peers.lose != nil {
		lost(l.peers.lose)
	}
	<-ctx.Done()
}

func (l *fakeLease) Release(ctx context.Context) error {
	l.peers.mu.Lock()
	defer l.peers.mu.Unlock()
	l.peers.released++
	return nil
}

type recordingSink struct {
	mu     sync.Mutex
	events []telemetry.Event
}

func (s *recordingSink) Emit(_ context.Context, e telemetry.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

// all returns a copy of the events received so far.
func (s *recordingSink) all() []telemetry.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// heldAtAPeer issues a certificate for name through m, before m has peers:
// the certificate a peer site holds, as the fleet would store it here.
func heldAtAPeer(t *testing.T, m *Manager, name string) *store.CertRecord {
	t.Helper()
	held, err := m.Issue(context.Background(), []string{name})
	if err != nil {
		t.Fatal(err)
	}
	return held
}

func TestIssueTakesAPeerCertificateInsteadOfOrdering(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, _ := newTestManager(t, issuer)
	ctx := context.Background()
	held := heldAtAPeer(t, m, "peer.example.com")
	orders := issuer.orders.Load()
	sink := &recordingSink{}
	m.cfg.Events = telemetry.NewHub(quietLogger(), sink)
	peers := &fakePeers{existing: held}
	m.cfg.Peers = peers

	rec, err := m.Issue(ctx, []string{"peer.example.com"})
	if err != nil || rec.Fingerprint != held.Fingerprint {
		t.Fatalf("Issue = %v, %v; want the peer's certificate", rec, err)
	}
	if n := issuer.orders.Load(); n != orders {
		t.Errorf("%d orders placed although a peer had the certificate", n-orders)
	}
	if len(sink.events) != 1 || sink.events[0].Type != telemetry.EventFromPeer {
		t.Errorf("events %+v, want one %s", sink.events, telemetry.EventFromPeer)
	}
	if _, err := st.GetCert(ctx, "peer.example.com"); err != nil {
		t.Error(err)
	}
	// The peers are asked under the lease: another site that stored the
	// certificate just before releasing its lease is not missed.
	if strings.Join(peers.calls, ",") != "lease,existing" || peers.released != 1 {
		t.Errorf("calls %v, released %d: want the lease, then the question, then the release", peers.calls, peers.released)
	}
}

func TestIssueOrdersOnlyUnderTheLeaseOfAQuorum(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()

	// Too few sites answer: nobody holds the name, so nginx is told not to
	// hold its first handshakes.
	peers := &fakePeers{refuse: errors.New("b and c not reached")}
	m.cfg.Peers = peers
	if err := st.MarkIssuing(ctx, "q.example.com"); err != nil {
		t.Fatal(err)
	}
	_, err := m.Issue(ctx, []string{"q.example.com"})
	if !errors.Is(err, store.ErrLockHeld) {
		t.Fatalf("lease short of the quorum: %v, want ErrLockHeld", err)
	}
	if mark, _, _ := st.IssuingMark(ctx, "q.example.com"); mark != store.Refused {
		t.Errorf("mark %q with nobody holding the lease, want %q", mark, store.Refused)
	}
	// Another site holds it and orders it: the mark stays, the certificate
	// comes from that site.
	peers.refuse = fmt.Errorf("site b holds it: %w", store.ErrLockHeld)
	if err := st.MarkIssuing(ctx, "q.example.com"); err != nil {
		t.Fatal(err)
	}
	_, err = m.Issue(ctx, []string{"q.example.com"})
	if !errors.Is(err, store.ErrLockHeld) {
		t.Fatalf("lease refused by the other sites: %v, want ErrLockHeld", err)
	}
	if mark, _, _ := st.IssuingMark(ctx, "q.example.com"); mark != store.Issuing {
		t.Errorf("mark %q while another site holds the lease, want %q", mark, store.Issuing)
	}
	if issuer.orders.Load() != 0 {
		t.Error("ordered without the quorum's lease")
	}
	if r.Client.Exists(ctx, st.Keys().Lock("q.example.com")).Val() != 0 {
		t.Error("the local lease is still held after the refusal")
	}

	peers.refuse = nil
	if _, err := m.Issue(ctx, []string{"q.example.com"}); err != nil {
		t.Fatal(err)
	}
	if peers.leases != 1 || peers.released != 1 || issuer.orders.Load() != 1 {
		t.Errorf("leases %d, released %d, orders %d: want 1 each", peers.leases, peers.released, issuer.orders.Load())
	}

	// A lease lost during the order interrupts it: nothing is stored.
	issuer.delay = 5 * time.Second
	peers.lose = errors.New("only this site still holds it")
	_, err = m.Issue(ctx, []string{"lost.example.com"})
	if !errors.Is(err, ErrInterrupted) {
		t.Errorf("lease lost: %v, want ErrInterrupted", err)
	}
	if _, err := st.GetCert(ctx, "lost.example.com"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("stored after the lease was lost: %v", err)
	}
}

// slowPeers are peer sites that take long to answer, during which lengthy
// answer meanwhile runs.
type slowPeers struct {
	*fakePeers
	meanwhile func()
}

func (p slowPeers) Existing(ctx context.Context, names []string, have *store.CertRecord) (*store.CertRecord, error) {
	p.meanwhile()
	return p.fakePeers.Existing(ctx, names, have)
}

// journalReadingIssuer is the fake CA recording the running order its
// journal tells at the start of each order.
type journalReadingIssuer struct {
	*fakeIssuer
	pending []*acmeclient.PendingOrder
}

func (i *journalReadingIssuer) ObtainWith(ctx context.Context, names []string, opts acmeclient.OrderOptions) (*acmeclient.Certificate, error) {
	p, err := opts.Journal.Pending(ctx)
	if err != nil {
		return nil, err
	}
	i.pending = append(i.pending, p)
	return i.Obtain(ctx, names)
}

// TestRunningOrderIsReadAgainAfterThePeerSites: the running order read with
// the lease is not what the order resumes once the peer sites were asked,
// which takes a while: the lease may have run out meanwhile and the agent
// that took the name over recorded its own order, which this one then
// resumes (and the fence keeps one certificate) rather than ordering a
// second certificate at the CA.
func TestRunningOrderIsReadAgainAfterThePeerSites(t *testing.T) {
	issuer := &journalReadingIssuer{fakeIssuer: &fakeIssuer{}}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	const name = "slow.example.com"
	newer := &store.OrderRecord{CA: issuer.DirectoryURL(), URL: "https://fake-ca/order/newer", Names: []string{name}}
	// A first order loads the lease's script: Redis runs it in the batch
	// that reads the running order from then on.
	if _, err := m.Issue(ctx, []string{"first.example.com"}); err != nil {
		t.Fatal(err)
	}
	issuer.pending = nil
	m.cfg.Peers = slowPeers{fakePeers: &fakePeers{}, meanwhile: func() {
		// The lease ran out; another agent took the name and ordered.
		if err := r.Client.Del(ctx, st.Keys().Lock(name)).Err(); err != nil {
			t.Error(err)
			return
		}
		other, err := st.AcquireLock(ctx, name, time.Minute)
		if err != nil {
			t.Error(err)
			return
		}
		if err := other.RecordOrder(ctx, newer); err != nil {
			t.Error(err)
		}
	}}
	_, err := m.Issue(ctx, []string{name})
	if !errors.Is(err, store.ErrFenced) {
		t.Errorf("order under a lease taken over: %v, want ErrFenced", err)
	}
	if len(issuer.pending) != 1 || issuer.pending[0] == nil || issuer.pending[0].URL != newer.URL {
		t.Errorf("the order started from the running orders %+v, want the one recorded by the agent that took the name over", issuer.pending)
	}
}
