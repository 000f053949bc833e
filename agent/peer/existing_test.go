package peer

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestExistingTakesAValidPeerCertificate: a certificate a peer holds is
// stored here when it covers the names, is not due for renewal and is newer
// than the one held; otherwise nothing is taken and no error is returned.
func TestExistingTakesAValidPeerCertificate(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, nil, "a", "b", "c")
	a, b := sites["a"], sites["b"]
	now := time.Now()

	if rec, err := a.fleet.Existing(ctx, []string{"none.example.com"}, nil); rec != nil || err != nil {
		t.Errorf("no peer holds one: %v, %v", rec, err)
	}

	// issued certificates last 90 days: one issued 70 days ago has less
	// than a third left, and is due for renewal.
	b.store(t, issued(t, now.Add(-70*24*time.Hour), "due.example.com"))
	if rec, err := a.fleet.Existing(ctx, []string{"due.example.com"}, nil); rec != nil || err != nil {
		t.Errorf("a certificate due for renewal was taken: %v, %v", rec, err)
	}
	// One that lacks a name asked for.
	b.store(t, issued(t, now.Add(-time.Hour), "x.example.com"))
	if rec, err := a.fleet.Existing(ctx, []string{"x.example.com", "y.example.com"}, nil); rec != nil || err != nil {
		t.Errorf("a certificate for other names was taken: %v, %v", rec, err)
	}
	if a.holds("due.example.com", "") || a.holds("x.example.com", "") {
		t.Fatal("a certificate was stored although none was taken")
	}

	// A valid one is taken and stored here, under every name.
	held := b.store(t, issued(t, now.Add(-time.Hour), "v.example.com", "w.example.com"))
	rec, err := a.fleet.Existing(ctx, []string{"v.example.com", "w.example.com"}, nil)
	if err != nil || rec == nil || rec.Fingerprint != held.Fingerprint {
		t.Fatalf("Existing = %+v, %v; want b's certificate", rec, err)
	}
	if !a.holds("w.example.com", held.Fingerprint) {
		t.Error("the certificate taken is not stored under its second name")
	}
	// Renewing it: b's is the one held here, so nothing newer is taken...
	if rec, err := a.fleet.Existing(ctx, []string{"v.example.com", "w.example.com"}, rec); rec != nil || err != nil {
		t.Errorf("the certificate held was taken again: %v, %v", rec, err)
	}
	// ...until c renews it first.
	renewed := sites["c"].store(t, issued(t, now.Add(-time.Minute), "v.example.com", "w.example.com"))
	got, err := a.fleet.Existing(ctx, []string{"v.example.com", "w.example.com"}, held)
	if err != nil || got == nil || got.Fingerprint != renewed.Fingerprint {
		t.Errorf("after c renewed it: %+v, %v; want c's certificate", got, err)
	}

	// A peer that cannot be asked is named in the error when no other has
	// the certificate; then it is known down and not asked until a probe
	// finds it again.
	sites["c"].down()
	if rec, err := a.fleet.Existing(ctx, []string{"nowhere.example.com"}, nil); rec != nil || err == nil ||
		!strings.Contains(err.Error(), "fetching the certificate for nowhere.example.com from c") {
		t.Errorf("with c down: %v, %v; want nothing and an error naming c", rec != nil, err)
	}
	b.store(t, issued(t, now.Add(-time.Hour), "z.example.com"))
	if rec, err := a.fleet.Existing(ctx, []string{"z.example.com"}, nil); rec == nil || err != nil {
		t.Errorf("with c known down: %v, %v; want b's certificate", rec != nil, err)
	}
}

// TestExistingAsksThePeersWhenAllWereSeenDown: when every peer failed its
// last call (this site's own network was down, say), the peers are asked
// all the same before an order: a certificate issued elsewhere meanwhile is
// only there, and the lease that follows would be granted by them.
func TestExistingAsksThePeersWhenAllWereSeenDown(t *testing.T) {
	watchdog(t, time.Minute)
	ctx := context.Background()
	sites := startSites(t, func(c *Config) { c.ProbeInterval = time.Hour }, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]

	b.down()
	c.down()
	a.fleet.probe(ctx)
	b.up(t)
	c.up(t)
	held := b.store(t, issued(t, time.Now().Add(-time.Hour), "back.example.com"))
	rec, err := a.fleet.Existing(ctx, []string{"back.example.com"}, nil)
	if err != nil || rec == nil || rec.Fingerprint != held.Fingerprint {
		t.Fatalf("Existing = %v, %v; want b's certificate", rec != nil, err)
	}
	if !a.holds("back.example.com", held.Fingerprint) {
		t.Error("b's certificate is not stored at a")
	}
}
