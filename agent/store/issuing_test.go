package store

import (
	"context"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestIssuingMarkFollowsTheSchema(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := doc["issuing"].Key("t:", "name", "a.example.com")

	if state, _, err := st.IssuingMark(ctx, "a.example.com"); err != nil || state != "" {
		t.Fatalf("no mark yet: %q, %v", state, err)
	}
	if err := st.MarkIssuing(ctx, "a.example.com"); err != nil {
		t.Fatal(err)
	}
	if v := r.Client.Get(ctx, key).Val(); v != "issuing" {
		t.Errorf("%s = %q, want issuing", key, v)
	}
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["issuing"].Type {
		t.Errorf("%s is a %s, the schema says %s", key, typ, doc["issuing"].Type)
	}
	if ttl := r.Client.TTL(ctx, key).Val(); ttl <= 50*time.Second || ttl > IssuingTTL {
		t.Errorf("TTL %s, want about %s", ttl, IssuingTTL)
	}

	if err := st.MarkRefused(ctx, "a.example.com", "pre-flight:\n no A record"); err != nil {
		t.Fatal(err)
	}
	if v := r.Client.Get(ctx, key).Val(); v != "refused pre-flight: no A record" {
		t.Errorf("%s = %q", key, v)
	}
	state, reason, err := st.IssuingMark(ctx, "a.example.com")
	if err != nil || state != Refused || reason != "pre-flight: no A record" {
		t.Errorf("IssuingMark = %q %q %v", state, reason, err)
	}
	if err := st.ClearIssuing(ctx, "a.example.com"); err != nil {
		t.Fatal(err)
	}
	if r.Client.Exists(ctx, key).Val() != 0 {
		t.Error("mark left after ClearIssuing")
	}
}
