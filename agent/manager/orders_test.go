package manager

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/acmeclient"
	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// hookedJournal calls onRecord after each record of the journal it wraps.
type hookedJournal struct {
	acmeclient.OrderJournal
	onRecord func(acmeclient.PendingOrder)
}

func (j hookedJournal) Record(ctx context.Context, o acmeclient.PendingOrder) error {
	err := j.OrderJournal.Record(ctx, o)
	j.onRecord(o)
	return err
}

// hookedIssuer is the CA client with the manager's journal hooked.
type hookedIssuer struct {
	*acmeclient.Client
	onRecord func(acmeclient.PendingOrder)
}

func (h hookedIssuer) ObtainWith(ctx context.Context, names []string, opts acmeclient.OrderOptions) (*acmeclient.Certificate, error) {
	opts.Journal = hookedJournal{opts.Journal, h.onRecord}
	return h.Client.ObtainWith(ctx, names, opts)
}

// proxiedStack is the CA stack (Redis, Pebble, nginx answering tokens from
// Redis) behind the proxy that counts the orders the CA created.
type proxiedStack struct {
	*caStack
	proxy *testenv.CAProxy
}

func startProxiedStack(t *testing.T) *proxiedStack {
	t.Helper()
	s := startCAStack(t)
	return &proxiedStack{caStack: s, proxy: testenv.StartCAProxy(t, s.pebble)}
}

func (s *proxiedStack) client(t *testing.T, tokens acmeclient.TokenStore) *acmeclient.Client {
	t.Helper()
	client, err := acmeclient.New(context.Background(), acmeclient.Config{
		DirectoryURL: s.proxy.DirectoryURL, Email: "ops@example.test", CARootFiles: []string{s.proxy.CARootsFile},
	}, s.st, acmeclient.NewHTTP01Provider(tokens, 0))
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func (s *proxiedStack) ordersFor(name string) int {
	n := 0
	for _, o := range s.proxy.Orders() {
		if len(o.Names) > 0 && o.Names[0] == name {
			n++
		}
	}
	return n
}

// issueOnceFree retries Issue while the name's lease is held elsewhere (an
// abandoned lease runs out), as the consumer does with a pending entry.
func issueOnceFree(t *testing.T, m *Manager, names []string) *store.CertRecord {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		rec, err := m.Issue(context.Background(), names)
		if err == nil {
			return rec
		}
		if !errors.Is(err, store.ErrLockHeld) || time.Now().After(deadline) {
			t.Fatalf("issuing %s: %v", names[0], err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// An agent that dies mid-order leaves its lease to run out and its order
// recorded with it; the agent that takes the name over resumes that order:
// the CA creates no second one. Cut off right after the CA created the order
// (its authorizations still to do) and once the certificate's key was
// recorded (about to be finalized).
func TestTakenOverNameResumesTheOrder(t *testing.T) {
	s := startProxiedStack(t)
	for _, tc := range []struct {
		name string
		stop func(acmeclient.PendingOrder) bool
	}{
		{"pending", func(acmeclient.PendingOrder) bool { return true }},
		{"ready", func(o acmeclient.PendingOrder) bool { return o.KeyPEM != "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			names := []string{"resume-" + tc.name + ".example.test"}
			// The first agent: its lease is never released, as after a kill.
			lock, err := s.st.AcquireLock(ctx, names[0], 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			orderCtx, kill := context.WithCancel(ctx)
			journal := hookedJournal{leaseJournal{lock: lock, log: quietLogger(), name: names[0]}, func(o acmeclient.PendingOrder) {
				if tc.stop(o) {
					kill()
				}
			}}
			if _, err := s.client(t, s.st).ObtainWith(orderCtx, names, acmeclient.OrderOptions{Journal: journal}); !errors.Is(err, context.Canceled) {
				t.Fatalf("the first agent's order: %v, want it cut off", err)
			}
			if _, err := s.st.RunningOrder(ctx, names[0]); err != nil {
				t.Fatalf("no order recorded with the abandoned lease: %v", err)
			}

			m := New(Config{Store: s.st, Issuer: s.client(t, s.st), Logger: quietLogger(), Clock: s.clock})
			rec := issueOnceFree(t, m, names)
			if got := s.ordersFor(names[0]); got != 1 {
				t.Errorf("%d orders at the CA for %s, want 1: the taken-over order resumed", got, names[0])
			}
			if stored, err := s.st.GetCert(ctx, names[0]); err != nil || stored.Fingerprint != rec.Fingerprint {
				t.Errorf("stored %v, %v: want the resumed order's certificate", stored, err)
			}
			if _, err := s.st.RunningOrder(ctx, names[0]); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("the order is still recorded after its certificate was stored: %v", err)
			}
		})
	}
}

// losingTokens is the Redis token store, except that the next token read
// back is then deleted from Redis: a restart that missed the last write,
// after the agent confirmed it and before the CA looked.
type losingTokens struct {
	*store.Store
	lose chan struct{}
}

func (l losingTokens) Token(ctx context.Context, name, token string) (string, error) {
	v, err := l.Store.Token(ctx, name, token)
	select {
	case <-l.lose:
		if err := l.Store.DeleteToken(ctx, name, token); err != nil {
			return "", err
		}
	default:
	}
	return v, err
}

// A validation that failed because Redis lost the token is ordered again
// within the same attempt: the name is issued by one Issue, no failure.
func TestLostTokenIsOrderedAgainAtOnce(t *testing.T) {
	s := startProxiedStack(t)
	lose := make(chan struct{}, 1)
	lose <- struct{}{}
	m := New(Config{Store: s.st, Issuer: s.client(t, losingTokens{s.st, lose}), Logger: quietLogger(), Clock: s.clock})
	names := []string{"token-lost.example.test"}
	if _, err := m.Issue(context.Background(), names); err != nil {
		t.Fatalf("issuing after the token was lost: %v", err)
	}
	if len(lose) != 0 {
		t.Fatal("no token was lost: the test proves nothing")
	}
	if got := s.ordersFor(names[0]); got != 2 {
		t.Errorf("%d orders at the CA, want 2: the failed one and its immediate successor", got)
	}
}

// A Redis restart during an order, shorter than the lease, does not cut it
// off: the keep-alive retries, takes the lease back (the restart lost it),
// and the certificate is stored under the same fence.
func TestOrderSurvivesAShortRedisRestart(t *testing.T) {
	s := startProxiedStack(t)
	restarted := false
	issuer := hookedIssuer{s.client(t, s.st), func(acmeclient.PendingOrder) {
		if restarted {
			return
		}
		restarted = true
		// Down across the first extension (at 2 s) and the Redis client's
		// own retries of it, and back before the lease (6 s) runs out.
		s.redis.Stop()
		time.Sleep(4 * time.Second)
		s.redis.Start()
	}}
	m := New(Config{Store: s.st, Issuer: issuer, Logger: quietLogger(), Clock: s.clock, LockTTL: 6 * time.Second})
	names := []string{"redis-restart.example.test"}
	rec, err := m.Issue(context.Background(), names)
	if err != nil {
		t.Fatalf("the order across a Redis restart: %v", err)
	}
	if !restarted {
		t.Fatal("Redis was not restarted during the order")
	}
	if stored, err := s.st.GetCert(context.Background(), names[0]); err != nil || stored.Fingerprint != rec.Fingerprint {
		t.Errorf("stored %v, %v: want the certificate", stored, err)
	}
	if got := s.ordersFor(names[0]); got != 1 {
		t.Errorf("%d orders at the CA, want 1", got)
	}
}
