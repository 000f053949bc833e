package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

var apiSecret = []byte("the fleet's secret, 32 bytes or more")

// logBuffer collects a server's log lines; the server writes from its
// handlers' goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// apiHarness is site "a" answering peers "b" and "c" over httptest's TLS,
// with its own Redis; requests are signed by "b" unless a test signs them
// otherwise.
type apiHarness struct {
	t      *testing.T
	st     *store.Store
	rdb    redis.UniversalClient
	ts     *httptest.Server
	signer *Signer
	logs   *logBuffer
}

func newAPIHarness(t *testing.T) *apiHarness {
	t.Helper()
	st, rdb := siteStore(t)
	logs := &logBuffer{}
	srv, err := NewServer(ServerConfig{Site: "a", Secret: apiSecret, Peers: []string{"b", "c"}, Store: st,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewTLSServer(srv)
	t.Cleanup(ts.Close)
	signer, err := NewSigner("b", apiSecret)
	if err != nil {
		t.Fatal(err)
	}
	return &apiHarness{t: t, st: st, rdb: rdb, ts: ts, signer: signer, logs: logs}
}

// request builds a request for path (from the host on) with body, signed by
// signer at the time at (nil signer: unsigned).
func (h *apiHarness) request(method, path string, body []byte, signer *Signer, at time.Time) *http.Request {
	h.t.Helper()
	req, err := http.NewRequest(method, h.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if signer != nil {
		if err := signer.Sign(req, body, at); err != nil {
			h.t.Fatal(err)
		}
	}
	return req
}

// send sends req and returns the status and the answer's body.
func (h *apiHarness) send(req *http.Request) (int, []byte) {
	h.t.Helper()
	resp, err := h.ts.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.StatusCode, answer
}

// call sends in as JSON (nil: no body) to path below PathPrefix, signed by
// "b" now, and decodes the answer into out (nil: not decoded).
func (h *apiHarness) call(method, path string, in, out any) int {
	h.t.Helper()
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			h.t.Fatal(err)
		}
	}
	status, answer := h.send(h.request(method, PathPrefix+path, body, h.signer, time.Now()))
	if out != nil && len(answer) > 0 {
		if err := json.Unmarshal(answer, out); err != nil {
			h.t.Fatalf("%s %s: answer %q: %v", method, path, answer, err)
		}
	}
	return status
}

// snapshot is every key of the site's Redis with its serialized value.
func (h *apiHarness) snapshot() map[string]string {
	h.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for _, k := range h.rdb.Keys(ctx, "*").Val() {
		out[k] = h.rdb.Dump(ctx, k).Val()
	}
	return out
}

// written lists the keys added or changed since before, nonces apart when
// nonces is false.
func (h *apiHarness) written(before map[string]string, nonces bool) []string {
	h.t.Helper()
	var out []string
	after := h.snapshot()
	for k, v := range after {
		if before[k] == v || (!nonces && strings.HasPrefix(k, "t:peer-nonce:")) {
			continue
		}
		out = append(out, k)
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			out = append(out, k+" (deleted)")
		}
	}
	slices.Sort(out)
	return out
}

func fingerprintOf(t *testing.T, r Record) string {
	t.Helper()
	rec, err := store.NewCertRecord([]byte(r.FullChain), []byte(r.Key), r.Primary)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Fingerprint
}

func TestServerAnswersEveryRoute(t *testing.T) {
	h := newAPIHarness(t)
	ctx := context.Background()
	now := time.Now()

	var health Health
	if status := h.call(http.MethodGet, "health", nil, &health); status != http.StatusOK ||
		health.Site != "a" || health.Certificates != 0 || health.Time < now.Unix()-5 {
		t.Fatalf("health: %d %+v", status, health)
	}

	// Tokens: stored with the pushed TTL, capped at 600 s; deleted.
	tokenKey := h.st.Keys().Token("a.example.com", "tok_-1")
	if status := h.call(http.MethodPut, "tokens/a.example.com/tok_-1",
		TokenPush{KeyAuthorization: "tok_-1.thumb", TTLSeconds: 30}, nil); status != http.StatusNoContent {
		t.Fatalf("PUT token: %d", status)
	}
	if v := h.rdb.Get(ctx, tokenKey).Val(); v != "tok_-1.thumb" {
		t.Errorf("token holds %q", v)
	}
	if ttl := h.rdb.TTL(ctx, tokenKey).Val(); ttl <= 20*time.Second || ttl > 30*time.Second {
		t.Errorf("token TTL %s, want the pushed 30 s", ttl)
	}
	h.call(http.MethodPut, "tokens/a.example.com/tok_-1", TokenPush{KeyAuthorization: "tok_-1.thumb", TTLSeconds: 86400}, nil)
	if ttl := h.rdb.TTL(ctx, tokenKey).Val(); ttl <= 590*time.Second || ttl > MaxTokenTTL {
		t.Errorf("token TTL %s, want it capped at %s", ttl, MaxTokenTTL)
	}
	if status := h.call(http.MethodDelete, "tokens/a.example.com/tok_-1", nil, nil); status != http.StatusNoContent {
		t.Errorf("DELETE token: %d", status)
	}
	if h.rdb.Exists(ctx, tokenKey).Val() != 0 {
		t.Error("the token survived its deletion")
	}

	// Certificates: pushed, fetched, listed, deleted.
	rec := issued(t, now.Add(-time.Hour), "a.example.com", "www.a.example.com")
	fp := fingerprintOf(t, rec)
	var pushed PushResult
	if status := h.call(http.MethodPut, "certs/a.example.com", rec, &pushed); status != http.StatusOK || !pushed.Stored {
		t.Fatalf("PUT cert: %d %+v", status, pushed)
	}
	var got Record
	if status := h.call(http.MethodGet, "certs/www.a.example.com", nil, &got); status != http.StatusOK ||
		got.Primary != "a.example.com" || fingerprintOf(t, got) != fp || got.CA != rec.CA || got.IssuedAt != rec.IssuedAt {
		t.Fatalf("GET cert: %d %+v", status, got)
	}
	var missing ErrorBody
	if status := h.call(http.MethodGet, "certs/b.example.com", nil, &missing); status != http.StatusNotFound || missing.Error == "" {
		t.Errorf("GET of a certificate not held: %d %+v", status, missing)
	}
	var inv InventoryPage
	entries := "inventory/entries?from=" + strconv.FormatInt(now.Unix(), 10) + "&offset=0&limit=10"
	if status := h.call(http.MethodGet, entries, nil, &inv); status != http.StatusOK || inv.Site != "a" ||
		len(inv.Certificates) != 1 || inv.Tombstones == nil || inv.More {
		t.Fatalf("inventory: %d %+v", status, inv)
	}
	var digests InventoryDigests
	if status := h.call(http.MethodGet, "inventory/digests?from=0&width=1", nil, &digests); status != http.StatusOK ||
		len(digests.Windows) != 1 || digests.Windows[0].Count != 1 || digests.Windows[0].Start != inv.Certificates[0].NotAfter {
		t.Fatalf("digests: %d %+v", status, digests)
	}
	if e := inv.Certificates[0]; e.Name != "a.example.com" || e.Fingerprint != fp || len(e.Names) != 2 ||
		e.NotBefore != now.Add(-time.Hour).Unix() || e.NotAfter != now.Add(-time.Hour+90*24*time.Hour).Unix() {
		t.Errorf("inventory entry %+v", e)
	}
	h.call(http.MethodGet, "health", nil, &health)
	if health.Certificates != 1 {
		t.Errorf("health counts %d certificates, want 1", health.Certificates)
	}
	var del DeleteResult
	if status := h.call(http.MethodDelete, "certs/a.example.com?fingerprint="+fp, nil, &del); status != http.StatusOK || !del.Deleted {
		t.Fatalf("DELETE cert: %d %+v", status, del)
	}
	if h.rdb.Exists(ctx, h.st.Keys().Cert("a.example.com"), h.st.Keys().Cert("www.a.example.com")).Val() != 0 {
		t.Error("the certificate survived its deletion")
	}
	inv = InventoryPage{}
	h.call(http.MethodGet, entries, nil, &inv)
	if len(inv.Certificates) != 0 || len(inv.Tombstones) != 1 || inv.Tombstones[0].Fingerprint != fp ||
		inv.Tombstones[0].Name != "a.example.com" || inv.Tombstones[0].Until != now.Add(-time.Hour+90*24*time.Hour).Unix() {
		t.Errorf("inventory after the delete: %+v", inv)
	}

	// Leases: taken, extended, released.
	lockKey := h.st.Keys().Lock("*.example.org")
	var lease LeaseResult
	if status := h.call(http.MethodPost, "leases/%2A.example.org", LeaseRequest{Holder: "b/x1", TTLSeconds: 60}, &lease); status != http.StatusOK || !lease.Granted {
		t.Fatalf("POST lease: %d %+v", status, lease)
	}
	if v := h.rdb.Get(ctx, lockKey).Val(); v != "b/x1" {
		t.Errorf("lock holds %q", v)
	}
	lease = LeaseResult{}
	if status := h.call(http.MethodPut, "leases/%2A.example.org", LeaseRequest{Holder: "b/x1", TTLSeconds: 3600}, &lease); status != http.StatusOK || !lease.Granted {
		t.Fatalf("PUT lease: %d %+v", status, lease)
	}
	if ttl := h.rdb.PTTL(ctx, lockKey).Val(); ttl <= MaxLeaseTTL-10*time.Second || ttl > MaxLeaseTTL {
		t.Errorf("lease TTL %s, want it capped at %s", ttl, MaxLeaseTTL)
	}
	if status := h.call(http.MethodDelete, "leases/%2A.example.org?holder=b%2Fx1", nil, nil); status != http.StatusNoContent {
		t.Fatalf("DELETE lease: %d", status)
	}
	if h.rdb.Exists(ctx, lockKey).Val() != 0 {
		t.Error("the lease survived its release")
	}
}

// TestClientAndServerAgree runs the client of this package against the
// server: both halves of the protocol, not each against a copy.
func TestClientAndServerAgree(t *testing.T) {
	h := newAPIHarness(t)
	ctx := context.Background()
	c, err := NewClient(ClientConfig{ID: "a", URL: h.ts.URL, Signer: h.signer, HTTPClient: h.ts.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if hl, err := c.Health(ctx); err != nil || hl.Site != "a" {
		t.Fatalf("Health: %+v, %v", hl, err)
	}
	if err := c.PutToken(ctx, "a.example.com", "tok", "tok.thumb", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteToken(ctx, "a.example.com", "tok"); err != nil {
		t.Fatal(err)
	}
	rec := issued(t, time.Now().Add(-time.Hour), "*.example.com")
	if res, err := c.PushCert(ctx, "*.example.com", rec); err != nil || !res.Stored {
		t.Fatalf("PushCert: %+v, %v", res, err)
	}
	if res, err := c.PushCert(ctx, "*.example.com", rec); err != nil || res.Stored || res.Reason != store.ReasonSame {
		t.Errorf("PushCert again: %+v, %v", res, err)
	}
	if got, err := c.GetCert(ctx, "*.example.com"); err != nil || got.FullChain == "" {
		t.Fatalf("GetCert: %v", err)
	}
	if inv, err := c.Entries(ctx, time.Now().Unix(), 0, 0, 10); err != nil || len(inv.Certificates) != 1 {
		t.Fatalf("Entries: %+v, %v", inv, err)
	}
	if ok, err := c.TakeLease(ctx, "*.example.com", "b/1", time.Minute); err != nil || !ok {
		t.Fatalf("TakeLease: %v, %v", ok, err)
	}
	if ok, err := c.TakeLease(ctx, "*.example.com", "b/2", time.Minute); err != nil || ok {
		t.Errorf("TakeLease by another holder: %v, %v", ok, err)
	}
	if ok, err := c.ExtendLease(ctx, "*.example.com", "b/1", time.Minute); err != nil || !ok {
		t.Errorf("ExtendLease: %v, %v", ok, err)
	}
	if err := c.ReleaseLease(ctx, "*.example.com", "b/1"); err != nil {
		t.Fatal(err)
	}
	if deleted, err := c.DeleteCert(ctx, "*.example.com", fingerprintOf(t, rec)); err != nil || !deleted {
		t.Errorf("DeleteCert: %v, %v", deleted, err)
	}
	if _, err := c.PushCert(ctx, "a.example.com", issued(t, time.Now(), "b.example.com")); statusOf(err) != http.StatusUnprocessableEntity {
		t.Errorf("PushCert of a certificate for another name: %v, want 422", err)
	}
}

// TestServerRefusesAndWritesNothing: the rejections the peer protocol is
// built for, each with its status, and nothing written to Redis (not even
// the nonce, before the request is verified).
func TestServerRefusesAndWritesNothing(t *testing.T) {
	h := newAPIHarness(t)
	now := time.Now()
	rec := issued(t, now.Add(-time.Hour), "a.example.com")
	body, _ := json.Marshal(rec)
	path := PathPrefix + "certs/a.example.com"
	forger, _ := NewSigner("b", []byte("not the fleet's secret, but as long"))
	stranger, _ := NewSigner("z", apiSecret)

	for _, tc := range []struct {
		what   string
		req    func() *http.Request
		status int
	}{
		{"a forged signature", func() *http.Request {
			return h.request(http.MethodPut, path, body, forger, now)
		}, http.StatusUnauthorized},
		{"a body altered after signing", func() *http.Request {
			req := h.request(http.MethodPut, path, body, h.signer, now)
			altered := bytes.Replace(body, []byte(`"ec256"`), []byte(`"ec384"`), 1)
			req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(altered)), int64(len(altered))
			return req
		}, http.StatusUnauthorized},
		{"a path altered after signing", func() *http.Request {
			req := h.request(http.MethodPut, path, body, h.signer, now)
			req.URL.Path = PathPrefix + "certs/b.example.com"
			return req
		}, http.StatusUnauthorized},
		{"an expired timestamp", func() *http.Request {
			return h.request(http.MethodPut, path, body, h.signer, now.Add(-MaxSkew-time.Minute))
		}, http.StatusUnauthorized},
		{"a timestamp from the future", func() *http.Request {
			return h.request(http.MethodPut, path, body, h.signer, now.Add(MaxSkew+time.Minute))
		}, http.StatusUnauthorized},
		{"an unknown site", func() *http.Request {
			return h.request(http.MethodPut, path, body, stranger, now)
		}, http.StatusUnauthorized},
		{"an unsigned request", func() *http.Request {
			return h.request(http.MethodPut, path, body, nil, now)
		}, http.StatusUnauthorized},
		{"a malformed nonce", func() *http.Request {
			req := h.request(http.MethodPut, path, body, h.signer, now)
			req.Header.Set(HeaderNonce, "not-hex")
			return req
		}, http.StatusUnauthorized},
		{"an oversized body, with its length", func() *http.Request {
			big := bytes.Repeat([]byte("x"), MaxBody+1)
			return h.request(http.MethodPut, path, big, h.signer, now)
		}, http.StatusRequestEntityTooLarge},
		{"an oversized body, chunked", func() *http.Request {
			big := bytes.Repeat([]byte("x"), MaxBody+1)
			req := h.request(http.MethodPut, path, big, h.signer, now)
			req.Body, req.ContentLength = io.NopCloser(struct{ io.Reader }{bytes.NewReader(big)}), -1
			return req
		}, http.StatusRequestEntityTooLarge},
	} {
		before := h.snapshot()
		status, answer := h.send(tc.req())
		var eb ErrorBody
		if status != tc.status || json.Unmarshal(answer, &eb) != nil || eb.Error == "" {
			t.Errorf("%s: %d %q, want %d with an error body", tc.what, status, answer, tc.status)
		}
		if w := h.written(before, true); len(w) != 0 {
			t.Errorf("%s: wrote %v", tc.what, w)
		}
	}

	// A replayed request: the first is answered, the same bytes again are
	// refused and change nothing.
	first := h.request(http.MethodPut, path, body, h.signer, now)
	replay := first.Clone(context.Background())
	replay.Body = io.NopCloser(bytes.NewReader(body))
	if status, _ := h.send(first); status != http.StatusOK {
		t.Fatalf("the original request: %d", status)
	}
	// Deleted, so that a replay that went through would show.
	h.rdb.Del(context.Background(), h.st.Keys().Cert("a.example.com"))
	before := h.snapshot()
	if status, answer := h.send(replay); status != http.StatusUnauthorized || !strings.Contains(string(answer), "replayed") {
		t.Errorf("the replay: %d %s", status, answer)
	}
	if w := h.written(before, true); len(w) != 0 {
		t.Errorf("the replay wrote %v", w)
	}

	// A certificate for another name: verified (its nonce is kept), then
	// refused with 422 and nothing else written.
	before = h.snapshot()
	other, _ := json.Marshal(issued(t, now.Add(-time.Hour), "evil.example.com"))
	status, answer := h.send(h.request(http.MethodPut, path, other, h.signer, now))
	if status != http.StatusUnprocessableEntity || !strings.Contains(string(answer), "do not cover") {
		t.Errorf("a certificate for another name: %d %s", status, answer)
	}
	if w := h.written(before, false); len(w) != 0 {
		t.Errorf("a certificate for another name wrote %v", w)
	}

	// Every refusal is logged at Warn with the site and reason, never with a
	// key or the record.
	logs := h.logs.String()
	for _, want := range []string{"level=WARN", "reason=\"bad signature\"", "reason=\"stale timestamp\"",
		"reason=\"unknown site\"", "reason=replayed", "site=z", "remote=127.0.0.1"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log has no %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "PRIVATE KEY") || strings.Contains(logs, "BEGIN CERTIFICATE") {
		t.Error("the log holds a record")
	}
}

func TestServerCertificateRules(t *testing.T) {
	h := newAPIHarness(t)
	ctx := context.Background()
	now := time.Now()
	current := issued(t, now.Add(-time.Hour), "a.example.com")
	var res PushResult
	if h.call(http.MethodPut, "certs/a.example.com", current, &res); !res.Stored {
		t.Fatalf("first push: %+v", res)
	}

	// An older record is not stored.
	res = PushResult{}
	if status := h.call(http.MethodPut, "certs/a.example.com", issued(t, now.Add(-2*time.Hour), "a.example.com"), &res); status != http.StatusOK ||
		res.Stored || res.Reason != store.ReasonOlder {
		t.Errorf("an older record: %d %+v", status, res)
	}
	if held, _ := h.st.GetCert(ctx, "a.example.com"); held.Fingerprint != fingerprintOf(t, current) {
		t.Error("the older record replaced the current one")
	}

	// A delete with another fingerprint keeps the record but tombstones
	// that fingerprint: it cannot be pushed here later.
	later := issued(t, now.Add(-time.Minute), "a.example.com")
	var del DeleteResult
	if status := h.call(http.MethodDelete, "certs/a.example.com?fingerprint="+fingerprintOf(t, later), nil, &del); status != http.StatusOK || del.Deleted {
		t.Fatalf("DELETE with another fingerprint: %d %+v", status, del)
	}
	if held, err := h.st.GetCert(ctx, "a.example.com"); err != nil || held.Fingerprint != fingerprintOf(t, current) {
		t.Fatalf("the record held was deleted: %v", err)
	}
	if dead, _ := h.st.Tombstoned(ctx, fingerprintOf(t, later), "a.example.com"); !dead {
		t.Error("the fingerprint was not tombstoned")
	}
	res = PushResult{}
	if status := h.call(http.MethodPut, "certs/a.example.com", later, &res); status != http.StatusOK ||
		res.Stored || res.Reason != store.ReasonTombstoned {
		t.Errorf("a tombstoned record: %d %+v", status, res)
	}
	if held, _ := h.st.GetCert(ctx, "a.example.com"); held.Fingerprint != fingerprintOf(t, current) {
		t.Error("the tombstoned record was stored")
	}
}

func TestServerLeases(t *testing.T) {
	h := newAPIHarness(t)
	ctx := context.Background()
	lockKey := h.st.Keys().Lock("a.example.com")

	// Held by an agent of this site: 409, and the lease is untouched.
	local, err := h.st.AcquireLock(ctx, "a.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	owner := h.rdb.Get(ctx, lockKey).Val()
	var lease LeaseResult
	if status := h.call(http.MethodPost, "leases/a.example.com", LeaseRequest{Holder: "b/1", TTLSeconds: 60}, &lease); status != http.StatusConflict ||
		lease.Granted || lease.HolderSite != "a" {
		t.Errorf("POST while a local agent holds it: %d %+v, want 409 naming this site", status, lease)
	}
	if status := h.call(http.MethodPut, "leases/a.example.com", LeaseRequest{Holder: "b/1", TTLSeconds: 60}, nil); status != http.StatusConflict {
		t.Errorf("PUT of a lease not held: %d", status)
	}
	h.call(http.MethodDelete, "leases/a.example.com?holder=b/1", nil, nil)
	if v := h.rdb.Get(ctx, lockKey).Val(); v != owner {
		t.Fatalf("the local lease became %q", v)
	}
	if err := local.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// Taken by b: c is refused; a holder of another site than the signer's is
	// not even considered.
	if status := h.call(http.MethodPost, "leases/a.example.com", LeaseRequest{Holder: "b/1", TTLSeconds: 60}, nil); status != http.StatusOK {
		t.Fatalf("POST: %d", status)
	}
	c, _ := NewSigner("c", apiSecret)
	body, _ := json.Marshal(LeaseRequest{Holder: "c/1", TTLSeconds: 60})
	status, answer := h.send(h.request(http.MethodPost, PathPrefix+"leases/a.example.com", body, c, time.Now()))
	if err := json.Unmarshal(answer, &lease); status != http.StatusConflict || err != nil || lease.HolderSite != "b" {
		t.Errorf("POST by another site while b holds it: %d %s, want 409 naming b", status, answer)
	}
	for _, tc := range []struct {
		method, path string
		req          *LeaseRequest
	}{
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "c/1", TTLSeconds: 60}},
		{http.MethodPut, "leases/a.example.com", &LeaseRequest{Holder: "c/1", TTLSeconds: 60}},
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "b", TTLSeconds: 60}},
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "b/", TTLSeconds: 60}},
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "bb/1", TTLSeconds: 60}},
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "b/1 2", TTLSeconds: 60}},
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "b/" + strings.Repeat("x", 65), TTLSeconds: 60}},
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "b/1", TTLSeconds: 0}},
		{http.MethodPost, "leases/b.example.com", &LeaseRequest{Holder: "b/1", TTLSeconds: -5}},
		{http.MethodDelete, "leases/a.example.com?holder=c/1", nil},
		{http.MethodDelete, "leases/a.example.com", nil},
	} {
		var in any
		if tc.req != nil {
			in = tc.req
		}
		before := h.snapshot()
		if status := h.call(tc.method, tc.path, in, nil); status != http.StatusBadRequest {
			t.Errorf("%s %s %+v: %d, want 400", tc.method, tc.path, tc.req, status)
		}
		if w := h.written(before, false); len(w) != 0 {
			t.Errorf("%s %s %+v wrote %v", tc.method, tc.path, tc.req, w)
		}
	}
	if v := h.rdb.Get(ctx, lockKey).Val(); v != "b/1" {
		t.Errorf("b's lease became %q", v)
	}
	// The same holder taking it again (a retried POST) is granted.
	if status := h.call(http.MethodPost, "leases/a.example.com", LeaseRequest{Holder: "b/1", TTLSeconds: 60}, nil); status != http.StatusOK {
		t.Errorf("the holder's retried POST: %d", status)
	}
	// A local agent cannot take what b holds.
	if _, err := h.st.AcquireLock(ctx, "a.example.com", time.Minute); err == nil {
		t.Error("a local agent took b's lease")
	}
}

func TestServerRefusesMalformedRequests(t *testing.T) {
	h := newAPIHarness(t)
	key := strings.Repeat("k", 43)
	token := func(tok string) TokenPush { return TokenPush{KeyAuthorization: tok + "." + key, TTLSeconds: 60} }
	goodFP := hex.EncodeToString(sha256.New().Sum(nil))
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
	}{
		{http.MethodGet, "certs/A.example.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/a.example.com.", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/a..example.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/localhost", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/192.0.2.1", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/-a.example.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/a_b.example.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/xn--a.example.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/a.example.com%2Fx", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/%2A.%2A.example.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/%2A.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/" + strings.Repeat("a", 64) + ".example.com", nil, http.StatusBadRequest},
		{http.MethodGet, "certs/a.example.com/x", nil, http.StatusNotFound},
		{http.MethodGet, "certs/", nil, http.StatusBadRequest},
		{http.MethodGet, "certs", nil, http.StatusNotFound},
		{http.MethodGet, "nothing", nil, http.StatusNotFound},
		{http.MethodGet, "", nil, http.StatusNotFound},
		{http.MethodGet, "health/", nil, http.StatusNotFound},
		{http.MethodPost, "health", nil, http.StatusMethodNotAllowed},
		{http.MethodPost, "certs/a.example.com", nil, http.StatusMethodNotAllowed},
		{http.MethodGet, "leases/a.example.com", nil, http.StatusMethodNotAllowed},
		{http.MethodPut, "certs/a.example.com", "not a record", http.StatusBadRequest},
		{http.MethodPut, "certs/a.example.com", nil, http.StatusBadRequest},
		{http.MethodDelete, "certs/a.example.com", nil, http.StatusBadRequest},
		{http.MethodDelete, "certs/a.example.com?fingerprint=" + strings.ToUpper(goodFP), nil, http.StatusBadRequest},
		{http.MethodDelete, "certs/a.example.com?fingerprint=abc", nil, http.StatusBadRequest},
		{http.MethodDelete, "certs/a.example.com?fingerprint=" + goodFP + "&fingerprint=" + goodFP, nil, http.StatusBadRequest},
		{http.MethodPut, "tokens/%2A.example.com/tok", token("tok"), http.StatusBadRequest},
		{http.MethodPut, "tokens/A.example.com/tok", token("tok"), http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/to+k", token("to+k"), http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/to%2Fk", token("to/k"), http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/" + strings.Repeat("t", 129), token(strings.Repeat("t", 129)), http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/", token(""), http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/tok", token("other"), http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/tok", TokenPush{KeyAuthorization: "tok.", TTLSeconds: 60}, http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/tok", TokenPush{KeyAuthorization: "tok.a b", TTLSeconds: 60}, http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/tok", TokenPush{KeyAuthorization: "tok." + key, TTLSeconds: 0}, http.StatusBadRequest},
		{http.MethodPut, "tokens/a.example.com/tok/x", token("tok"), http.StatusNotFound},
		{http.MethodPut, "tokens/a.example.com", token("tok"), http.StatusNotFound},
	} {
		before := h.snapshot()
		var eb ErrorBody
		if status := h.call(tc.method, tc.path, tc.body, &eb); status != tc.status || eb.Error == "" {
			t.Errorf("%s %s: %d %+v, want %d with an error", tc.method, tc.path, status, eb, tc.status)
		}
		if w := h.written(before, false); len(w) != 0 {
			t.Errorf("%s %s wrote %v", tc.method, tc.path, w)
		}
	}
	// The token of a refused request is not logged.
	if strings.Contains(h.logs.String(), strings.Repeat("t", 129)) {
		t.Error("a token reached the log")
	}
}

func TestNewServerChecksItsConfiguration(t *testing.T) {
	st, _ := siteStore(t)
	good := ServerConfig{Site: "a", Secret: apiSecret, Peers: []string{"b"}, Store: st}
	if _, err := NewServer(good); err != nil {
		t.Fatal(err)
	}
	for what, mutate := range map[string]func(*ServerConfig){
		"a bad site id":  func(c *ServerConfig) { c.Site = "A" },
		"a short secret": func(c *ServerConfig) { c.Secret = []byte("short") },
		"no peers":       func(c *ServerConfig) { c.Peers = nil },
		"a bad peer id":  func(c *ServerConfig) { c.Peers = []string{"b:1"} },
		"itself as peer": func(c *ServerConfig) { c.Peers = []string{"b", "a"} },
		"no store":       func(c *ServerConfig) { c.Store = nil },
	} {
		cfg := good
		mutate(&cfg)
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}

func TestServerStartServesHTTPSOnly(t *testing.T) {
	st, _ := siteStore(t)
	srv, err := NewServer(ServerConfig{Site: "a", Secret: apiSecret, Peers: []string{"b"}, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Addr() != "" || srv.Shutdown(context.Background()) != nil {
		t.Error("a server not started has an address or fails to shut down")
	}
	dir := t.TempDir()
	cert := testenv.NewCert(t, testenv.CertSpec{CommonName: "site a", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	certFile, keyFile := cert.Write(t, dir, "peer")
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	if err := srv.Start(addr, certFile, certFile); err == nil {
		t.Fatal("started with a certificate as its key")
	}
	if err := srv.Start(addr, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	if srv.Addr() != addr {
		t.Errorf("Addr() = %q, want %q", srv.Addr(), addr)
	}
	if err := srv.Start(addr, certFile, keyFile); err == nil {
		t.Error("started twice")
	}

	roots := x509.NewCertPool()
	roots.AddCert(cert.X509)
	signer, _ := NewSigner("b", apiSecret)
	c, err := NewClient(ClientConfig{ID: "a", URL: "https://" + addr, Signer: signer,
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := c.Health(context.Background()); err != nil || h.Site != "a" {
		t.Fatalf("health over HTTPS: %+v, %v", h, err)
	}
	// Plain HTTP is not served, nor TLS before 1.2.
	if resp, err := http.Get("http://" + addr + PathPrefix + "health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("answered over plain HTTP")
		}
	}
	if conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		conn.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}

	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Error("still listening after Shutdown")
	}
}

// TestServerCapsHugeTTLs: a TTL too large to count in nanoseconds is capped
// like any other, never taken for "no expiry" (a token kept for ever) or for
// an expiry in the past.
func TestServerCapsHugeTTLs(t *testing.T) {
	h := newAPIHarness(t)
	ctx := context.Background()
	const huge = 9_223_372_037 // seconds: past the range of time.Duration
	push := TokenPush{KeyAuthorization: "tok.thumb", TTLSeconds: huge}
	if status := h.call(http.MethodPut, "tokens/t.example.com/tok", push, nil); status != http.StatusNoContent {
		t.Fatalf("PUT token: %d", status)
	}
	if ttl := h.rdb.TTL(ctx, h.st.Keys().Token("t.example.com", "tok")).Val(); ttl <= 0 || ttl > MaxTokenTTL {
		t.Errorf("the token's TTL is %s, want at most %s", ttl, MaxTokenTTL)
	}
	var lease LeaseResult
	req := LeaseRequest{Holder: "b/1", TTLSeconds: huge}
	if status := h.call(http.MethodPost, "leases/l.example.com", req, &lease); status != http.StatusOK || !lease.Granted {
		t.Fatalf("POST lease: %d %+v", status, lease)
	}
	if status := h.call(http.MethodPut, "leases/l.example.com", req, &lease); status != http.StatusOK || !lease.Granted {
		t.Fatalf("PUT lease: %d %+v", status, lease)
	}
	if ttl := h.rdb.PTTL(ctx, h.st.Keys().Lock("l.example.com")).Val(); ttl <= 0 || ttl > MaxLeaseTTL {
		t.Errorf("the lease's TTL is %s, want at most %s", ttl, MaxLeaseTTL)
	}
}
