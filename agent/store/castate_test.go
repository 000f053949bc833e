package store

import (
	"context"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestCADownIsOneRecordProbedByOneAgentAtATime(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	const dir = "https://ca.example/dir"
	now := time.UnixMilli(1_700_000_000_000)

	if s, err := st.CADown(ctx, dir); err != nil || s != nil {
		t.Fatalf("before any outage: %+v, %v", s, err)
	}
	if claimed, err := st.ClaimCAProbe(ctx, dir, now, time.Second, 4*time.Second); err != nil || claimed {
		t.Fatalf("a CA that is up has no probe to take: %v, %v", claimed, err)
	}
	first, err := st.MarkCADown(ctx, dir, "CA unreachable:\n connection refused", now, time.Second)
	if err != nil || !first {
		t.Fatalf("first mark: %v, %v", first, err)
	}
	again, err := st.MarkCADown(ctx, dir, "CA not answering: no response in time", now.Add(time.Second), time.Second)
	if err != nil || again {
		t.Fatalf("second mark must not count as noticing: %v, %v", again, err)
	}
	key, _ := doc["cadown"].Key("t:", "ca", CAID(dir))
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["cadown"].Type {
		t.Errorf("%s is a %q, the schema says %s", key, typ, doc["cadown"].Type)
	}
	if ttl := r.Client.TTL(ctx, key).Val(); ttl <= 0 || ttl > CADownTTL {
		t.Errorf("%s TTL %s, want up to %s", key, ttl, CADownTTL)
	}
	s, err := st.CADown(ctx, dir)
	if err != nil || s == nil {
		t.Fatalf("after the mark: %+v, %v", s, err)
	}
	if s.Reason != "CA not answering: no response in time" || !s.Since.Equal(now) || !s.NextProbe.Equal(now.Add(time.Second)) {
		t.Errorf("state %+v", s)
	}

	// The probe is due after the first pause, then the pause doubles up to
	// the most; only one caller takes each.
	at := now.Add(time.Second)
	for i, pause := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if claimed, _ := st.ClaimCAProbe(ctx, dir, at.Add(-time.Millisecond), time.Second, 4*time.Second); claimed {
			t.Fatalf("probe %d taken before it was due", i+1)
		}
		if claimed, err := st.ClaimCAProbe(ctx, dir, at, time.Second, 4*time.Second); err != nil || !claimed {
			t.Fatalf("probe %d not taken when due: %v", i+1, err)
		}
		if claimed, _ := st.ClaimCAProbe(ctx, dir, at, time.Second, 4*time.Second); claimed {
			t.Fatalf("probe %d taken twice", i+1)
		}
		at = at.Add(pause)
		if s, _ := st.CADown(ctx, dir); !s.NextProbe.Equal(at) || s.Probes != i+1 {
			t.Fatalf("after probe %d: %+v, want the next at %s", i+1, s, at)
		}
	}
	if err := st.ClearCADown(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if s, err := st.CADown(ctx, dir); err != nil || s != nil {
		t.Fatalf("after clearing: %+v, %v", s, err)
	}
}

func TestNamesWaitingForTheCAGoBackToTheStream(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, _ := schemadoc.Load()
	if names, err := st.ResumeWaiting(ctx); err != nil || len(names) != 0 {
		t.Fatalf("nothing waits: %v, %v", names, err)
	}
	for _, n := range []string{"a.example", "b.example", "a.example"} {
		if err := st.WaitForCA(ctx, n, "node-1"); err != nil {
			t.Fatal(err)
		}
	}
	key, _ := doc["cawaiting"].Key("t:")
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["cawaiting"].Type {
		t.Errorf("%s is a %q, the schema says %s", key, typ, doc["cawaiting"].Type)
	}
	waiting, err := st.WaitingForCA(ctx, 10)
	if err != nil || len(waiting) != 2 {
		t.Fatalf("waiting: %v, %v", waiting, err)
	}
	if err := st.MarkRefusedMany(ctx, waiting, "deferred: CA unreachable"); err != nil {
		t.Fatal(err)
	}
	if state, reason, _ := st.IssuingMark(ctx, "b.example"); state != Refused || reason != "deferred: CA unreachable" {
		t.Errorf("mark of b.example: %q %q", state, reason)
	}
	names, err := st.ResumeWaiting(ctx)
	if err != nil || len(names) != 2 {
		t.Fatalf("resumed %v, %v", names, err)
	}
	if n := r.Client.Exists(ctx, key).Val(); n != 0 {
		t.Errorf("the waiting names are still kept after resuming")
	}
	if err := st.EnsureGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	reqs, err := st.ReadRequests(ctx, "g", "c", 10, 100*time.Millisecond, false)
	if err != nil || len(reqs) != 2 {
		t.Fatalf("stream after resuming: %+v, %v", reqs, err)
	}
	for _, req := range reqs {
		if req.Node != "node-1" || (req.Name != "a.example" && req.Name != "b.example") {
			t.Errorf("entry %+v", req)
		}
	}
	if err := st.ClearIssuingMany(ctx, names); err != nil {
		t.Fatal(err)
	}
	if state, _, _ := st.IssuingMark(ctx, "b.example"); state != "" {
		t.Errorf("mark of b.example after clearing: %q", state)
	}
}

func TestRedisTroubleIsToldFromOtherErrors(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	if err := r.Client.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.Client.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	_, err := st.AcquireLock(ctx, "oom.example", time.Minute)
	if err == nil || !Unavailable(err) {
		t.Errorf("taking a lease out of memory: %v, want an error Unavailable reports", err)
	}
	if err := r.Client.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetFailure(ctx, "none.example"); Unavailable(err) {
		t.Errorf("not found is not Redis trouble: %v", err)
	}
	r.Stop()
	if _, err := st.CADown(ctx, "https://ca.example/dir"); err == nil || !Unavailable(err) {
		t.Errorf("Redis stopped: %v, want an error Unavailable reports", err)
	}
}
