package store

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestPutCertsIfNewer: one batch stores the new and newer records, and
// leaves, each with its reason, the ones held already, older or
// tombstoned; the tombstone check of the batch finds the same.
func TestPutCertsIfNewer(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	day := time.Now().Add(-10 * 24 * time.Hour).Truncate(time.Second)
	same := recordFrom(t, day, "same.example.com")
	older := recordFrom(t, day, "older.example.com")
	replaced := recordFrom(t, day, "newer.example.com")
	dead := recordFrom(t, day, "dead.example.com")
	if err := st.PutCerts(ctx, []*CertRecord{same, older, replaced, dead}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DeleteCert(ctx, "dead.example.com"); err != nil {
		t.Fatal(err)
	}
	batch := []*CertRecord{
		recordFrom(t, day, "new.example.com", "alt.example.com"),
		same,
		recordFrom(t, day.Add(-time.Hour), "older.example.com"),
		recordFrom(t, day.Add(time.Hour), "newer.example.com"),
		dead,
	}
	changes := r.Client.XLen(ctx, st.keys.Changes()).Val()
	got, err := st.PutCertsIfNewer(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	want := []PutOutcome{{Stored: true}, {Reason: ReasonSame}, {Reason: ReasonOlder}, {Stored: true}, {Reason: ReasonTombstoned}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("PutCertsIfNewer = %v, want %v", got, want)
	}
	if grew := r.Client.XLen(ctx, st.keys.Changes()).Val() - changes; grew != 3 {
		t.Errorf("changes grew by %d, want 3 (two names, one name)", grew)
	}
	for name, fp := range map[string]string{"alt.example.com": batch[0].Fingerprint,
		"older.example.com": older.Fingerprint, "newer.example.com": batch[3].Fingerprint} {
		if rec, err := st.GetCert(ctx, name); err != nil || rec.Fingerprint != fp {
			t.Errorf("%s holds %v (%v), want %s", name, rec, err, fp)
		}
	}
	dup := []*CertRecord{batch[0], recordFrom(t, day, "new.example.com")}
	if _, err := st.PutCertsIfNewer(ctx, dup); err == nil {
		t.Error("two records of one primary name were accepted in one batch")
	}
	tombstoned, err := st.AnyTombstoned(ctx, []string{dead.Fingerprint, same.Fingerprint, dead.Fingerprint},
		[][]string{{"x.example.com", "dead.example.com"}, {"same.example.com"}, nil})
	if err != nil || fmt.Sprint(tombstoned) != "[true false false]" {
		t.Errorf("AnyTombstoned = %v, %v; want [true false false]", tombstoned, err)
	}
}
