package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/schemadoc"
	"github.com/certagent/certagent/agent/names"
)

func TestRefusalsFollowTheSchema(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := doc["refusals"].Key("t:")
	now := time.Unix(1_800_000_000, 0)
	for range 3 {
		if err := st.MarkRefusedCounted(ctx, "x.example.org", "denied: no rule", RefusedByPolicy, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.MarkRefusedCounted(ctx, "", "invalid name", RefusedInvalid, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["refusals"].Type {
		t.Errorf("%s is a %s, the document says %s", key, typ, doc["refusals"].Type)
	}
	if h := r.Client.HGetAll(ctx, key).Val(); h["policy"] != "3" || h["invalid"] != "1" || h["last_invalid"] != "1800000001" {
		t.Errorf("%s = %v", key, h)
	}
	if state, reason, _ := st.IssuingMark(ctx, "x.example.org"); state != Refused || reason != "denied: no rule" {
		t.Errorf("mark %q %q", state, reason)
	}
	counts, err := st.RefusalCounts(ctx)
	if err != nil || counts[RefusedByPolicy].Count != 3 || !counts[RefusedInvalid].Last.Equal(now.Add(time.Second)) {
		t.Errorf("RefusalCounts = %+v, %v", counts, err)
	}
}

// A stream entry's fields are bounded and on one line before anyone logs,
// events or uses them, and a cleaned name is never a valid one.
func TestRequestFieldsAreCleaned(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	huge := strings.Repeat("a", 100<<10) + ".example.com"
	for _, values := range [][]any{
		{"name", huge, "node", "web-1"},
		{"name", "ok.example.com", "node", "evil\r\nlevel=ERROR msg=forged"},
		{"name", "Mixed.Example.COM.", "node", strings.Repeat("n", 100<<10)},
		{"name", "b\u00fccher.example", "node", "web-1"},
	} {
		if err := r.Client.XAdd(ctx, &redis.XAddArgs{Stream: st.Keys().Requests(), Values: values}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.EnsureGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	reqs, err := st.ReadRequests(ctx, "g", "c", 10, time.Second, false)
	if err != nil || len(reqs) != 4 {
		t.Fatalf("ReadRequests = %d entries, %v", len(reqs), err)
	}
	for _, req := range reqs {
		for _, v := range []string{req.Name, req.Node} {
			if len(v) > 300 || strings.ContainsAny(v, "\r\n\x00") {
				t.Errorf("field of %d bytes not cleaned: %.80q", len(v), v)
			}
		}
	}
	if reqs[1].Name != "ok.example.com" || reqs[2].Name != "Mixed.Example.COM." || reqs[0].Node != "web-1" {
		t.Errorf("fields that need no cleaning changed: %q %q %q", reqs[1].Name, reqs[2].Name, reqs[0].Node)
	}
	if !strings.HasSuffix(reqs[0].Name, "[102412 bytes]") || reqs[1].Node != `evil\x0d\x0alevel=ERROR\x20msg=forged` {
		t.Errorf("cleaned fields: %q, %q", reqs[0].Name, reqs[1].Node)
	}
	for _, raw := range []string{huge, "a.example.com\r\n", "a.example.com\\", "ok.example.com" + strings.Repeat(".a", 200),
		"b\u00fccher.example", "a b.example.com"} {
		if clean := cleanField(raw); clean != raw {
			if name, err := names.Normalize(clean); err == nil {
				t.Errorf("cleanField(%.40q) = %q, a valid name", raw, name)
			}
		}
	}
}
