package store

import (
	"context"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestDeleteCertTombstonesTheFingerprint(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	rec := fencedRecord(t, "a.example.com")
	rec.Names = append(rec.Names, "b.example.com")
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	// A tombstone of a certificate that expired yesterday is dropped by the
	// next write: it guards nothing.
	stale := time.Now().Add(-24 * time.Hour).Unix()
	r.Client.ZAdd(ctx, st.Keys().Tombstones(), redisZ(stale, "00ff:old.example.com"))

	if _, err := st.DeleteCert(ctx, "b.example.com"); err != nil {
		t.Fatal(err)
	}
	doc, _ := schemadoc.Load()
	key, _ := doc["tombstones"].Key("t:")
	if typ := r.Client.Type(ctx, key).Val(); typ != doc["tombstones"].Type {
		t.Fatalf("%s is a %s, the document says %s", key, typ, doc["tombstones"].Type)
	}
	// Under the primary name, until the not-after.
	if score := r.Client.ZScore(ctx, key, rec.Fingerprint+":a.example.com").Val(); int64(score) != rec.NotAfter.Unix() {
		t.Errorf("tombstone score %v, want the not-after %d", score, rec.NotAfter.Unix())
	}
	if r.Client.ZScore(ctx, key, "00ff:old.example.com").Err() == nil {
		t.Error("an expired tombstone survived a write")
	}
	for _, tc := range []struct {
		names []string
		want  bool
	}{
		{[]string{"a.example.com"}, true},
		{[]string{"b.example.com"}, false},
		{[]string{"b.example.com", "a.example.com"}, true},
		{nil, false},
	} {
		if got, err := st.Tombstoned(ctx, rec.Fingerprint, tc.names...); err != nil || got != tc.want {
			t.Errorf("Tombstoned(%v) = %v, %v; want %v", tc.names, got, err, tc.want)
		}
	}
	if got, _ := st.Tombstoned(ctx, "00aa", "a.example.com"); got {
		t.Error("another fingerprint is tombstoned")
	}

	list, err := st.Tombstones(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "a.example.com" || list[0].Fingerprint != rec.Fingerprint ||
		!list[0].Until.Equal(rec.NotAfter.Truncate(time.Second)) {
		t.Errorf("tombstones %+v", list)
	}
	if list, _ := st.Tombstones(ctx, rec.NotAfter.Add(time.Second)); len(list) != 0 {
		t.Errorf("tombstones after the not-after: %+v", list)
	}

	// A corrupt record has no known fingerprint: deleted, nothing tombstoned.
	r.Client.HSet(ctx, st.Keys().Cert("c.example.com"), "fullchain", "x", "not_after", "soon")
	if _, err := st.DeleteCert(ctx, "c.example.com"); err != nil {
		t.Fatal(err)
	}
	if n := r.Client.ZCard(ctx, key).Val(); n != 1 {
		t.Errorf("%d tombstones after deleting a corrupt record, want 1", n)
	}
}
