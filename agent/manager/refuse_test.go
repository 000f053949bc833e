package manager

import (
	"context"
	"strings"
	"testing"

	"github.com/certagent/certagent/agent/store"
)

// Every refusal is marked where nginx reads it, invalid names included, and
// counted instead of evented.
func TestConsumerMarksEveryRefusal(t *testing.T) {
	issuer := &fakeIssuer{}
	m, st, r := newTestManager(t, issuer)
	ctx := context.Background()
	stop := startConsumer(t, m, st, "*.example.com")
	defer stop()

	for _, raw := range []string{"xn--a.example.com", "XN--N3H.example.com", "outside.example.org", "bad_name.example.com"} {
		request(t, r.Client, st, raw)
	}
	waitFor(t, "every entry refused", func() bool {
		counts, err := st.RefusalCounts(ctx)
		return err == nil && counts[store.RefusedInvalid].Count+counts[store.RefusedByPolicy].Count == 4
	})
	for name, want := range map[string]string{
		"xn--a.example.com":   "is not a valid A-label",
		"xn--n3h.example.com": "IDNA2008 disallows",
		"outside.example.org": "denied",
	} {
		state, reason, err := st.IssuingMark(ctx, name)
		if err != nil || state != store.Refused || !strings.Contains(reason, want) {
			t.Errorf("%s: mark %q %q %v, want refused and %q", name, state, reason, err, want)
		}
	}
	counts, err := st.RefusalCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[store.RefusedInvalid]; got.Count != 3 || got.Last.IsZero() {
		t.Errorf("invalid names counted %+v, want 3", got)
	}
	if got := counts[store.RefusedByPolicy]; got.Count != 1 {
		t.Errorf("names outside the rules counted %+v, want 1", got)
	}
	if issuer.orders.Load() != 0 {
		t.Errorf("%d orders for refused names", issuer.orders.Load())
	}
}
