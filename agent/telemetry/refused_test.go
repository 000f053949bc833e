package telemetry

import (
	"context"
	"testing"

	"github.com/certagent/certagent/agent/internal/testenv"
	"github.com/certagent/certagent/agent/store"
)

// Refusals are counted, never streamed, and orders deferred by a CA outage
// are not streamed either: a flood of them leaves the events stream to the
// events an operator needs.
func TestRefusalsAreCountedNotStreamed(t *testing.T) {
	r := testenv.StartRedis(t)
	st := store.New(r.Client, store.Keys{})
	m := NewMetrics()
	sink := NewStreamSink(st, m, quiet())
	hub := NewHub(quiet(), m, sink)
	ctx := context.Background()
	for range 500 {
		hub.Emit(ctx, Event{Type: EventRefused, Kind: store.RefusedByPolicy, Name: "x.example.org", Reason: "denied"})
	}
	hub.Emit(ctx, Event{Type: EventRefused, Kind: store.RefusedInvalid, Name: "xn--a.example"})
	for range 500 { // a CA outage: orders waiting for the CA
		hub.Emit(ctx, Event{Type: EventDeferred, Kind: "renew", Name: "b.example.com", Error: "CA not answering"})
	}
	hub.Emit(ctx, Event{Type: EventIssued, Kind: "issue", Name: "a.example.com"})
	drain(sink.Run)

	msgs, err := r.Client.XRange(ctx, st.Keys().Events(), "-", "+").Result()
	if err != nil || len(msgs) != 1 || msgs[0].Values["type"] != EventIssued {
		t.Fatalf("events stream: %v %v, want the issued event alone", msgs, err)
	}
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]float64{}
	for _, f := range fams {
		for _, metric := range f.Metric {
			key := f.GetName()
			for _, l := range metric.Label {
				key += "/" + l.GetValue()
			}
			if c := metric.GetCounter(); c != nil {
				byName[key] = c.GetValue()
			}
		}
	}
	if _, ok := byName["certagent_orders_total/renew/failure"]; !ok {
		t.Fatalf("no series certagent_orders_total{kind=renew,result=failure}: %v", byName)
	}
	for key, want := range map[string]float64{
		"certagent_refused_total/policy":       500,
		"certagent_refused_total/invalid":      1,
		"certagent_denied_total":               500,
		"certagent_requests_total":             501,
		"certagent_orders_total/renew/failure": 0,
	} {
		if byName[key] != want {
			t.Errorf("%s = %v, want %v", key, byName[key], want)
		}
	}
}
