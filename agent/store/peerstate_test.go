package store

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

// TestPeerStatesRoundTripAndSchema: the recorded view of the peers reads
// back as written, replaces the previous one, and its JSON has exactly the
// fields the schema document lists.
func TestPeerStatesRoundTripAndSchema(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, err := schemadoc.Load()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second).UTC()
	states := []PeerState{
		{ID: "c", URL: "https://c.example:8443", Agent: "host-1",
			LastError: "dial tcp: connection refused", LastErrorAt: now},
		{ID: "b", URL: "https://b.example:8443", Up: true, LastOK: now, LastSync: now.Add(-time.Minute),
			Pulled: 3, Pushed: 2, Agent: "host-1"},
	}
	if err := st.SetPeerStates(ctx, states); err != nil {
		t.Fatal(err)
	}
	key, _ := doc["peers"].Key("t:")
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["peers"].Type {
		t.Fatalf("%s is a %s, the document says %s", key, typ, doc["peers"].Type)
	}
	got, err := st.PeerStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []PeerState{states[1], states[0]}
	if !slices.Equal(got, want) {
		t.Errorf("read back %+v\nwant %+v", got, want)
	}

	var fields map[string]any
	if err := json.Unmarshal([]byte(r.Client.HGet(ctx, key, "b").Val()), &fields); err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(doc["peers"].Encoding, -1) {
		documented = append(documented, m[1])
	}
	for _, f := range documented {
		if _, ok := fields[f]; !ok {
			t.Errorf("the document lists %q, the stored JSON has no such field", f)
		}
	}
	for f := range fields {
		if !slices.Contains(documented, f) {
			t.Errorf("the stored JSON has %q, which the document does not list", f)
		}
	}

	if err := st.SetPeerStates(ctx, states[1:]); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.PeerStates(ctx); len(got) != 1 || got[0].ID != "b" {
		t.Errorf("after dropping c: %+v", got)
	}
	r.Client.HSet(ctx, key, "d", "{")
	got, err = st.PeerStates(ctx)
	if !errors.Is(err, ErrCorrupt) || len(got) != 2 || got[1].ID != "d" {
		t.Errorf("with a corrupt value: %+v, %v", got, err)
	}
}
