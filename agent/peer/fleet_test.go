package peer

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

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

	// What the site's peer API answered: how many answers to inventory
	// pages, to requests for many records and for one, and the largest
	// answer in bytes.
	entryPages   atomic.Int64
	recordsPages atomic.Int64
	certGets     atomic.Int64
	largestSent  atomic.Int64
	// older makes the site answer POST records as an agent that predates
	// it: no such path.
	older atomic.Bool
}

// metered counts what the site's peer API answers.
func (s *testSite) metered(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := &meteredWriter{ResponseWriter: w}
		records := r.URL.Path == PathPrefix+"records"
		if records && s.older.Load() {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"no such path"}`))
			return
		}
		h.ServeHTTP(m, r)
		switch {
		case strings.HasSuffix(r.URL.Path, "/inventory/entries"):
			s.entryPages.Add(1)
		case records:
			s.recordsPages.Add(1)
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, PathPrefix+"certs/"):
			s.certGets.Add(1)
		}
		for {
			largest := s.largestSent.Load()
			if m.n <= largest || s.largestSent.CompareAndSwap(largest, m.n) {
				return
			}
		}
	})
}

type meteredWriter struct {
	http.ResponseWriter
	n int64
}

func (m *meteredWriter) Write(p []byte) (int, error) {
	m.n += int64(len(p))
	return m.ResponseWriter.Write(p)
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
		s.api = httptest.NewTLSServer(s.metered(srv))
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
	s.api = httptest.NewUnstartedServer(s.metered(s.srv))
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
