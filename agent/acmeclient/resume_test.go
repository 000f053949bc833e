package acmeclient

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// memJournal is an OrderJournal in memory, shared by the "agents" of a test
// as Redis is in production. onRecord sees every record as it is written.
type memJournal struct {
	mu       sync.Mutex
	rec      *PendingOrder
	forgets  int
	onRecord func(PendingOrder)
}

func (j *memJournal) Pending(context.Context) (*PendingOrder, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.rec == nil {
		return nil, nil
	}
	rec := *j.rec
	return &rec, nil
}

func (j *memJournal) Record(_ context.Context, o PendingOrder) error {
	j.mu.Lock()
	j.rec = &o
	hook := j.onRecord
	j.mu.Unlock()
	if hook != nil {
		hook(o)
	}
	return nil
}

func (j *memJournal) Forget(context.Context) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.rec = nil
	j.forgets++
	return nil
}

func (j *memJournal) current() *PendingOrder {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rec
}

// resumeSetup is Pebble behind the counting CA proxy, with two agents (two
// clients of one account, as two agents share it in Redis).
type resumeSetup struct {
	proxy  *testenv.CAProxy
	tokens *memTokens
	first  *Client
	second *Client
}

func startResumeSetup(t *testing.T) *resumeSetup {
	t.Helper()
	pebble, tokens := startCA(t)
	proxy := testenv.StartCAProxy(t, pebble)
	cfg := Config{DirectoryURL: proxy.DirectoryURL, CARootFiles: []string{proxy.CARootsFile}}
	accounts := &memAccounts{}
	s := &resumeSetup{proxy: proxy, tokens: tokens}
	var err error
	if s.first, err = New(context.Background(), cfg, accounts, NewHTTP01Provider(tokens, 0)); err != nil {
		t.Fatal(err)
	}
	if s.second, err = New(context.Background(), cfg, accounts, NewHTTP01Provider(tokens, 0)); err != nil {
		t.Fatal(err)
	}
	return s
}

// newOrders counts the orders the CA created for name.
func (s *resumeSetup) newOrders(name string) int {
	n := 0
	for _, o := range s.proxy.Orders() {
		for _, on := range o.Names {
			if on == name {
				n++
			}
		}
	}
	return n
}

// abandonAt runs an order with the first agent and cuts it off (as a kill
// does: nothing after that point reaches the CA from it) as soon as the
// journal sees a record for which stop is true.
func (s *resumeSetup) abandonAt(t *testing.T, j *memJournal, names []string, stop func(PendingOrder) bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	j.onRecord = func(o PendingOrder) {
		if stop(o) {
			cancel()
		}
	}
	if _, err := s.first.ObtainWith(ctx, names, OrderOptions{Journal: j}); !errors.Is(err, context.Canceled) {
		t.Fatalf("the abandoned order: %v, want it cut off", err)
	}
	j.onRecord = nil
}

// An order cut off right after the CA created it is taken up by the next
// agent: its authorizations are completed and it is finalized, with no
// second order at the CA.
func TestObtainResumesAnOrderAbandonedBeforeItsAuthorizations(t *testing.T) {
	s := startResumeSetup(t)
	j := &memJournal{}
	names := []string{"resume-pending.example.test", "www.resume-pending.example.test"}
	s.abandonAt(t, j, names, func(PendingOrder) bool { return true })
	abandoned := j.current()
	if abandoned == nil || abandoned.URL == "" || abandoned.KeyPEM != "" || abandoned.CA != s.first.DirectoryURL() {
		t.Fatalf("recorded %+v: want the order's URL at this CA, no key yet", abandoned)
	}

	cert, err := s.second.ObtainWith(context.Background(), names, OrderOptions{Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.newOrders(names[0]); got != 1 {
		t.Errorf("%d orders at the CA for %s, want 1 (the abandoned one resumed)", got, names[0])
	}
	if rec := j.current(); rec == nil || rec.URL != abandoned.URL || rec.KeyPEM == "" {
		t.Errorf("record after the resumed order %+v: want the same order, its key recorded before finalization", rec)
	}
	leaf, _ := parseChain(t, cert.FullChain)
	if leaf.VerifyHostname("www.resume-pending.example.test") != nil {
		t.Error("the certificate does not cover the names")
	}
}

// An order cut off once its key was recorded (about to be finalized) is
// finalized by the next agent with that key.
func TestObtainFinalizesAResumedOrderWithTheRecordedKey(t *testing.T) {
	s := startResumeSetup(t)
	j := &memJournal{}
	names := []string{"resume-ready.example.test"}
	s.abandonAt(t, j, names, func(o PendingOrder) bool { return o.KeyPEM != "" })
	recorded := j.current().KeyPEM

	cert, err := s.second.ObtainWith(context.Background(), names, OrderOptions{Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.newOrders(names[0]); got != 1 {
		t.Errorf("%d orders at the CA, want 1", got)
	}
	if string(cert.KeyPEM) != recorded {
		t.Error("the resumed order did not use the key recorded before finalization")
	}
	assertKeyMatches(t, cert)
}

// An agent killed after the CA issued, before the certificate was stored:
// the next agent downloads that certificate, with the recorded key, instead
// of ordering again.
func TestObtainDownloadsTheCertificateOfAResumedValidOrder(t *testing.T) {
	s := startResumeSetup(t)
	j := &memJournal{}
	names := []string{"resume-valid.example.test"}
	issued, err := s.first.ObtainWith(context.Background(), names, OrderOptions{Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing stored it (store.Lock.PutCert deletes the record): it stays.
	again, err := s.second.ObtainWith(context.Background(), names, OrderOptions{Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.newOrders(names[0]); got != 1 {
		t.Errorf("%d orders at the CA, want 1", got)
	}
	a, _ := parseChain(t, issued.FullChain)
	b, _ := parseChain(t, again.FullChain)
	if a.SerialNumber.Cmp(b.SerialNumber) != 0 || string(again.KeyPEM) != string(issued.KeyPEM) {
		t.Error("the resumed order brought another certificate or key than the one issued")
	}
	assertKeyMatches(t, again)
}

// An order that failed at the CA is not resumed: the next attempt forgets it
// and places a new one. A record for other names is not resumed either.
func TestObtainReplacesAnInvalidOrder(t *testing.T) {
	s := startResumeSetup(t)
	j := &memJournal{}
	names := []string{"resume-invalid.example.test"}
	s.tokens.mu.Lock()
	s.tokens.broken = true
	s.tokens.mu.Unlock()
	_, err := s.first.ObtainWith(context.Background(), names, OrderOptions{Journal: j})
	if err == nil {
		t.Fatal("the order succeeded with nothing answering the challenge")
	}
	if errors.Is(err, ErrAnswerLost) {
		t.Errorf("a validation failure with the token in the store was taken for a lost answer: %v", err)
	}
	failed := j.current()
	s.tokens.mu.Lock()
	s.tokens.broken = false
	s.tokens.mu.Unlock()

	if _, err := s.second.ObtainWith(context.Background(), names, OrderOptions{Journal: j}); err != nil {
		t.Fatal(err)
	}
	if got := s.newOrders(names[0]); got != 2 {
		t.Errorf("%d orders at the CA, want 2 (the invalid one and its replacement)", got)
	}
	if j.forgets != 1 || j.current() == nil || j.current().URL == failed.URL {
		t.Errorf("the invalid order was not forgotten and replaced: %d forgets, record %+v", j.forgets, j.current())
	}

	other := []string{"resume-other.example.test"}
	if _, err := s.second.ObtainWith(context.Background(), other, OrderOptions{Journal: j}); err != nil {
		t.Fatal(err)
	}
	if got := s.newOrders(other[0]); got != 1 {
		t.Errorf("%d orders for other names, want 1 of their own", got)
	}
}

// A token that the store confirmed and then lost (a Redis restart missing
// the last writes) fails the validation; the same Obtain places a new order
// at once, which succeeds.
func TestObtainOrdersAgainAtOnceWhenTheAnswerWasLost(t *testing.T) {
	s := startResumeSetup(t)
	j := &memJournal{}
	names := []string{"answer-lost.example.test"}
	s.tokens.mu.Lock()
	s.tokens.loseNext = true
	s.tokens.mu.Unlock()
	cert, err := s.first.ObtainWith(context.Background(), names, OrderOptions{Journal: j})
	if err != nil {
		t.Fatalf("the order after a lost answer: %v", err)
	}
	assertKeyMatches(t, cert)
	if got := s.newOrders(names[0]); got != 2 {
		t.Errorf("%d orders at the CA, want 2 (the failed one and one at once)", got)
	}
	s.tokens.mu.Lock()
	lost := s.tokens.lost
	s.tokens.mu.Unlock()
	if lost != 1 {
		t.Errorf("%d tokens lost, want the first one", lost)
	}
}

// A validation that failed while the store was restarting (the token kept,
// but nginx could not read it: 503) is ordered again at once too.
func TestObtainOrdersAgainAtOnceWhenTheStoreRestarted(t *testing.T) {
	s := startResumeSetup(t)
	names := []string{"store-restarted.example.test"}
	s.tokens.mu.Lock()
	s.tokens.unavailable = 1
	s.tokens.restartedAt = time.Now().Add(time.Hour) // after any presentation
	s.tokens.mu.Unlock()
	if _, err := s.first.ObtainWith(context.Background(), names, OrderOptions{Journal: &memJournal{}}); err != nil {
		t.Fatalf("the order after the store restarted: %v", err)
	}
	if got := s.newOrders(names[0]); got != 2 {
		t.Errorf("%d orders at the CA, want 2 (the failed one and one at once)", got)
	}
}

func assertKeyMatches(t *testing.T, cert *Certificate) {
	t.Helper()
	if _, err := tls.X509KeyPair(cert.FullChain, cert.KeyPEM); err != nil {
		t.Errorf("the key does not match the certificate: %v", err)
	}
}
