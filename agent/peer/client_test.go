package peer

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/store"
)

var fleetSecret = []byte("0123456789abcdef0123456789abcdef")

// signedRequest is one request a fake peer received, after its signature checked out.
type signedRequest struct {
	method, target, site string
	body                 []byte
}

// fakePeer is an HTTPS server that verifies every request's signature and
// answers with the handler of its route ("METHOD path", path below
// PathPrefix without the query).
func fakePeer(t *testing.T, routes map[string]http.HandlerFunc) (*httptest.Server, func() []signedRequest) {
	t.Helper()
	var mu sync.Mutex
	var got []signedRequest
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, MaxBody))
		signed, err := Verify(r, body, fleetSecret, map[string]bool{"a": true}, time.Now())
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(ErrorBody{Error: err.Error()})
			return
		}
		mu.Lock()
		got = append(got, signedRequest{method: r.Method, target: r.URL.RequestURI(), site: signed.Site, body: body})
		mu.Unlock()
		h, ok := routes[r.Method+" "+strings.TrimPrefix(r.URL.Path, PathPrefix)]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(ErrorBody{Error: "no such route"})
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []signedRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]signedRequest(nil), got...)
	}
}

func reply(status int, v any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if v != nil {
			json.NewEncoder(w).Encode(v)
		}
	}
}

func testClient(t *testing.T, srv *httptest.Server, timeout time.Duration) *Client {
	t.Helper()
	signer, err := NewSigner("a", fleetSecret)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientConfig{ID: "b", URL: srv.URL, Signer: signer, HTTPClient: srv.Client(), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewClientRefusesPlainHTTPAndBadIDs(t *testing.T) {
	signer, _ := NewSigner("a", fleetSecret)
	for _, cfg := range []ClientConfig{
		{ID: "b", URL: "http://b.example:8443", Signer: signer},
		{ID: "b", URL: "b.example:8443", Signer: signer},
		{ID: "b", URL: "https://user@b.example:8443", Signer: signer},
		{ID: "b", URL: "https://b.example:8443/?x=1", Signer: signer},
		{ID: "B", URL: "https://b.example:8443", Signer: signer},
		{ID: "b", URL: "https://b.example:8443"},
	} {
		if _, err := NewClient(cfg); err == nil {
			t.Errorf("NewClient(%+v) accepted", cfg)
		}
	}
	if _, err := NewClient(ClientConfig{ID: "b", URL: "https://b.example:8443/", Signer: signer}); err != nil {
		t.Error(err)
	}
}

// TestClientSpeaksEveryRoute: each method sends the documented method, path
// and body, signed by this site, and reads the documented answer.
func TestClientSpeaksEveryRoute(t *testing.T) {
	rec := Record{FullChain: "chain", Key: "key", Primary: "a.example.com", KeyType: "ec256", IssuedAt: 7}
	srv, requests := fakePeer(t, map[string]http.HandlerFunc{
		"GET health":                      reply(200, Health{Site: "b", Time: 42, Certificates: 3}),
		"PUT tokens/a.example.com/T0k":    reply(204, nil),
		"DELETE tokens/a.example.com/T0k": reply(204, nil),
		"GET inventory/entries":           reply(200, InventoryPage{Site: "b", Certificates: []InventoryEntry{{Name: "a.example.com", Fingerprint: "ff"}}}),
		"GET inventory/digests":           reply(200, InventoryDigests{Site: "b", Width: 60, Windows: []WindowDigest{{Start: 120, Count: 2, Digest: "00"}}}),
		"GET certs/a.example.com":         reply(200, rec),
		"GET certs/*.example.com":         reply(200, rec),
		"PUT certs/a.example.com":         reply(200, PushResult{Stored: false, Reason: "same"}),
		"DELETE certs/a.example.com":      reply(200, DeleteResult{Deleted: true}),
		"POST leases/a.example.com":       reply(200, LeaseResult{Granted: true}),
		"PUT leases/a.example.com":        reply(409, LeaseResult{Error: "held by b/1"}),
		"DELETE leases/a.example.com":     reply(204, nil),
	})
	c := testClient(t, srv, 0)
	ctx := context.Background()

	if h, err := c.Health(ctx); err != nil || h.Site != "b" || h.Certificates != 3 {
		t.Errorf("Health = %+v, %v", h, err)
	}
	if err := c.PutToken(ctx, "a.example.com", "T0k", "T0k.thumb", 600*time.Second); err != nil {
		t.Error(err)
	}
	if err := c.DeleteToken(ctx, "a.example.com", "T0k"); err != nil {
		t.Error(err)
	}
	if inv, err := c.Entries(ctx, 100, 0, 0, 50); err != nil || len(inv.Certificates) != 1 || inv.Certificates[0].Fingerprint != "ff" {
		t.Errorf("Entries = %+v, %v", inv, err)
	}
	if d, err := c.Digests(ctx, 100, 200, 60); err != nil || len(d.Windows) != 1 || d.Windows[0].Count != 2 {
		t.Errorf("Digests = %+v, %v", d, err)
	}
	if r, err := c.GetCert(ctx, "a.example.com"); err != nil || *r != rec {
		t.Errorf("GetCert = %+v, %v", r, err)
	}
	if _, err := c.GetCert(ctx, "*.example.com"); err != nil {
		t.Errorf("GetCert of a wildcard: %v", err)
	}
	if res, err := c.PushCert(ctx, "a.example.com", rec); err != nil || res.Stored || res.Reason != "same" {
		t.Errorf("PushCert = %+v, %v", res, err)
	}
	if deleted, err := c.DeleteCert(ctx, "a.example.com", "ff00"); err != nil || !deleted {
		t.Errorf("DeleteCert = %v, %v", deleted, err)
	}
	if granted, err := c.TakeLease(ctx, "a.example.com", "a/01", 120*time.Second); err != nil || !granted {
		t.Errorf("TakeLease = %v, %v", granted, err)
	}
	if kept, err := c.ExtendLease(ctx, "a.example.com", "a/01", 120*time.Second); err != nil || kept {
		t.Errorf("ExtendLease answered 409 = %v, %v; want false, nil", kept, err)
	}
	if err := c.ReleaseLease(ctx, "a.example.com", "a/01"); err != nil {
		t.Error(err)
	}

	want := []struct{ method, target, body string }{
		{"GET", PathPrefix + "health", ""},
		{"PUT", PathPrefix + "tokens/a.example.com/T0k", `{"key_authorization":"T0k.thumb","ttl_seconds":600}`},
		{"DELETE", PathPrefix + "tokens/a.example.com/T0k", ""},
		{"GET", PathPrefix + "inventory/entries?from=100&limit=50&offset=0", ""},
		{"GET", PathPrefix + "inventory/digests?from=100&to=200&width=60", ""},
		{"GET", PathPrefix + "certs/a.example.com", ""},
		{"GET", PathPrefix + "certs/%2A.example.com", ""},
		{"PUT", PathPrefix + "certs/a.example.com", string(mustJSON(t, rec))},
		{"DELETE", PathPrefix + "certs/a.example.com?fingerprint=ff00", ""},
		{"POST", PathPrefix + "leases/a.example.com", `{"holder":"a/01","ttl_seconds":120}`},
		{"PUT", PathPrefix + "leases/a.example.com", `{"holder":"a/01","ttl_seconds":120}`},
		{"DELETE", PathPrefix + "leases/a.example.com?holder=a%2F01", ""},
	}
	got := requests()
	if len(got) != len(want) {
		t.Fatalf("the peer saw %d signed requests, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.method != w.method || g.target != w.target || string(g.body) != w.body || g.site != "a" {
			t.Errorf("request %d: %s %s %q from %s; want %s %s %q from a", i, g.method, g.target, g.body, g.site,
				w.method, w.target, w.body)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestClientTurnsRefusalsIntoErrors: 4xx and 5xx answers are errors that
// carry the status and the peer's message; a missing record wraps
// store.ErrNotFound; an answer over the limit and a peer that does not
// answer in time are errors too.
func TestClientTurnsRefusalsIntoErrors(t *testing.T) {
	srv, _ := fakePeer(t, map[string]http.HandlerFunc{
		"PUT certs/a.example.com": reply(422, ErrorBody{Error: "the leaf does not cover a.example.com"}),
		"GET inventory/digests":   reply(500, ErrorBody{Error: "redis down"}),
		"GET certs/big.example.com": func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"fullchain":"` + strings.Repeat("x", MaxBody) + `"}`))
		},
		"GET health": func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		"POST leases/a.example.com": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "/elsewhere")
			w.WriteHeader(http.StatusTemporaryRedirect)
		},
	})
	c := testClient(t, srv, 300*time.Millisecond)
	ctx := context.Background()

	_, err := c.PushCert(ctx, "a.example.com", Record{})
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 422 || se.Peer != "b" || se.Message != "the leaf does not cover a.example.com" {
		t.Errorf("PushCert refused: %v", err)
	}
	if _, err := c.Digests(ctx, 1, 0, 60); !errors.As(err, &se) || se.Status != 500 || !strings.Contains(err.Error(), "redis down") {
		t.Errorf("Digests with a 500: %v", err)
	}
	if _, err := c.GetCert(ctx, "none.example.com"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetCert of a missing record: %v, want ErrNotFound", err)
	}
	if _, err := c.GetCert(ctx, "big.example.com"); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("GetCert with an answer over the limit: %v", err)
	}
	if _, err := c.TakeLease(ctx, "a.example.com", "a/01", time.Minute); !errors.As(err, &se) || se.Status != 307 {
		t.Errorf("TakeLease redirected: %v, want the redirect as an error", err)
	}
	start := time.Now()
	if _, err := c.Health(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Health of a peer that does not answer: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the call took %s despite a 300ms timeout", took)
	}

	// A peer that does not know this site answers 401.
	other, _ := NewSigner("z", fleetSecret)
	c.signer = other
	if _, err := c.Digests(ctx, 1, 0, 60); !errors.As(err, &se) || se.Status != 401 {
		t.Errorf("unknown site: %v, want 401", err)
	}
}
