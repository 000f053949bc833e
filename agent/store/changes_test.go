package store

import (
	"context"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

// TestReadChangesFollowsWritesAndDeletes: a follower that starts after the
// newest entry sees every later put and delete, one entry per name, with
// the fingerprint of the certificate concerned.
func TestReadChangesFollowsWritesAndDeletes(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	doc, _ := schemadoc.Load()
	if typ := doc["changes"].Type; typ != "stream" {
		t.Fatalf("the document says changes is a %s", typ)
	}

	last, err := st.LastChangeID(ctx)
	if err != nil || last != "0-0" {
		t.Fatalf("newest change of an empty stream: %q, %v", last, err)
	}
	chain, key := leafPEM(t, time.Now().Add(time.Hour), "old.example.com")
	old, _ := NewCertRecord(chain, key, "")
	if err := st.PutCert(ctx, old); err != nil {
		t.Fatal(err)
	}
	if last, err = st.LastChangeID(ctx); err != nil || last == "0-0" {
		t.Fatalf("newest change after a write: %q, %v", last, err)
	}

	chain, key = leafPEM(t, time.Now().Add(time.Hour), "a.example.com", "b.example.com")
	rec, _ := NewCertRecord(chain, key, "a.example.com")
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DeleteCert(ctx, "a.example.com"); err != nil {
		t.Fatal(err)
	}
	got, err := st.ReadChanges(ctx, last, time.Second, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{
		{Name: "a.example.com", Op: "put", Fingerprint: rec.Fingerprint},
		{Name: "b.example.com", Op: "put", Fingerprint: rec.Fingerprint},
		{Name: "a.example.com", Op: "delete", Fingerprint: rec.Fingerprint},
		{Name: "b.example.com", Op: "delete", Fingerprint: rec.Fingerprint},
	}
	if len(got) != len(want) {
		t.Fatalf("changes %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].ID == "" || got[i].Name != want[i].Name || got[i].Op != want[i].Op || got[i].Fingerprint != want[i].Fingerprint {
			t.Errorf("change %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if n := r.Client.XLen(ctx, st.Keys().Changes()).Val(); n != 5 {
		t.Errorf("stream length %d, want 5", n)
	}

	// Nothing after the newest entry: the read waits its block and returns
	// empty-handed.
	start := time.Now()
	none, err := st.ReadChanges(ctx, got[len(got)-1].ID, 200*time.Millisecond, 100)
	if err != nil || len(none) != 0 {
		t.Errorf("read past the end: %+v, %v", none, err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Errorf("the read returned after %s, without waiting", waited)
	}
	if _, err := st.ReadChanges(ctx, "0-0", 0, 1); err == nil {
		t.Error("a read with block 0 (forever) was accepted")
	}
}
