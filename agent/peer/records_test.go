package peer

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServerAnswersManyRecords: POST records answers the records held for
// the names asked, in order, none for a name not held, as GET certs/{name}
// answers each; it refuses an empty or oversized list and a name not in
// normal form.
func TestServerAnswersManyRecords(t *testing.T) {
	h := newAPIHarness(t)
	ctx := context.Background()
	c, err := NewClient(ClientConfig{ID: "a", URL: h.ts.URL, Signer: h.signer, HTTPClient: h.ts.Client()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	held := map[string]Record{}
	for _, name := range []string{"a.example.com", "*.example.org"} {
		held[name] = issued(t, now.Add(-time.Hour), name)
		if res, err := c.PushCert(ctx, name, held[name]); err != nil || !res.Stored {
			t.Fatalf("PushCert %s: %+v, %v", name, res, err)
		}
	}
	names := []string{"*.example.org", "missing.example.com", "a.example.com"}
	got, err := c.GetCerts(ctx, names)
	if err != nil || len(got) != len(names) {
		t.Fatalf("GetCerts = %+v, %v", got, err)
	}
	for i, nr := range got {
		want, ok := held[names[i]]
		switch {
		case nr.Name != names[i]:
			t.Errorf("answer %d is for %s, want %s", i, nr.Name, names[i])
		case !ok && nr.Record != nil:
			t.Errorf("a record answered for %s, which is not held", nr.Name)
		case ok && (nr.Record == nil || fingerprintOf(t, *nr.Record) != fingerprintOf(t, want) || nr.Record.Primary != names[i]):
			t.Errorf("the record answered for %s is not the one held: %+v", nr.Name, nr.Record)
		}
	}
	// Records of 600 KB (a long certificate URL) fill an answer after 3 or 4:
	// the rest is left to be asked again.
	var large []string
	for i := range 6 {
		name := fmt.Sprintf("large%d.example.com", i)
		r := issued(t, now.Add(-time.Hour), name)
		r.CertURL = "https://ca.example/" + strings.Repeat("x", 600<<10)
		if _, err := c.PushCert(ctx, name, r); err != nil {
			t.Fatal(err)
		}
		large = append(large, name)
	}
	if got, err := c.GetCerts(ctx, large); err != nil || len(got) < 3 || len(got) > 4 || got[0].Record == nil {
		t.Errorf("GetCerts of 6 records of 600 KB answered %d records, %v; want 3 or 4", len(got), err)
	}
	tooMany := make([]string, MaxRecordsAsked+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("n%d.example.com", i)
	}
	for what, asked := range map[string][]string{"no name": {}, "too many names": tooMany,
		"a name not in normal form": {"a.example.com", "A.Example.com"}} {
		var eb ErrorBody
		if status := h.call(http.MethodPost, "records", RecordsRequest{Names: asked}, &eb); status != http.StatusBadRequest || eb.Error == "" {
			t.Errorf("%s: %d %+v, want 400", what, status, eb)
		}
	}
}

// TestPullsFromAnOlderPeerOneAtATime: a peer whose agent predates POST
// records answers it with 404; the exchange then pulls its certificates
// one request each, and still brings them all.
func TestPullsFromAnOlderPeerOneAtATime(t *testing.T) {
	watchdog(t, 2*time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.SyncInterval = time.Hour }, "a", "b")
	a, b := sites["a"], sites["b"]
	a.older.Store(true)
	now := time.Now()
	ca := testCA(t, now)
	const certs = 2*pullBatch + 30
	for i := range certs {
		a.store(t, issuedBy(t, ca, now.Add(-time.Hour), fmt.Sprintf("n%d.example.com", i)))
	}
	if err := b.fleet.SyncNow(ctx); err != nil {
		t.Fatalf("exchange at b: %v", err)
	}
	for i := range certs {
		if name := fmt.Sprintf("n%d.example.com", i); !b.holds(name, "") {
			t.Fatalf("b misses %s after the exchange", name)
		}
	}
	if n := a.certGets.Load(); n != certs {
		t.Errorf("%d single pulls for %d certificates", n, certs)
	}
	if n := a.recordsPages.Load(); n != 0 {
		t.Errorf("%d answers to POST records from an older agent", n)
	}
}
