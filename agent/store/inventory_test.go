package store

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestInventoryListsEveryCertificateOnce(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	if inv, err := allPages(ctx, st, 0); err != nil || len(inv) != 0 {
		t.Fatalf("empty store: %v, %v", inv, err)
	}
	// More than a page, one of them with two names.
	want := map[string]*CertRecord{}
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	proto := recordFrom(t, base, "x.example.com", "y.example.com")
	for i := range inventoryPage + 3 {
		rec := *proto
		name := "n" + strconv.Itoa(i) + ".example.com"
		rec.Names = []string{name}
		if i == 0 {
			rec.Names = append(rec.Names, "alias.example.com")
		}
		rec.Fingerprint = strconv.Itoa(i)
		rec.NotAfter = base.Add(time.Duration(i) * time.Minute)
		if err := st.PutCert(ctx, &rec); err != nil {
			t.Fatal(err)
		}
		want[name] = &rec
	}
	// A stale index entry and a corrupt record are left out.
	r.Client.ZAdd(ctx, st.Keys().Expiry(), redisZ(base.Unix(), "gone.example.com"))
	r.Client.HSet(ctx, st.Keys().Cert("bad.example.com"), "names", "bad.example.com", "not_after", "soon")
	r.Client.ZAdd(ctx, st.Keys().Expiry(), redisZ(base.Unix(), "bad.example.com"))

	inv, err := allPages(ctx, st, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv) != len(want) {
		t.Fatalf("%d entries, want %d", len(inv), len(want))
	}
	for _, e := range inv {
		rec := want[e.Name]
		if rec == nil {
			t.Fatalf("unexpected entry %+v", e)
		}
		if e.Fingerprint != rec.Fingerprint || strings.Join(e.Names, ",") != strings.Join(rec.Names, ",") ||
			!e.NotAfter.Equal(rec.NotAfter) || !e.NotBefore.Equal(rec.NotBefore) {
			t.Errorf("%s: %+v, want %+v", e.Name, e, rec)
		}
		delete(want, e.Name)
	}
}

// allPages reads every certificate from from on, a page of 97 at a time.
func allPages(ctx context.Context, st *Store, from int64) ([]InventoryEntry, error) {
	var out []InventoryEntry
	for offset := int64(0); ; offset += 97 {
		page, more, err := st.InventoryPage(ctx, from, 0, offset, 97)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if !more {
			return out, nil
		}
	}
}

func TestInventoryDigestsSumUpWindows(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	add := func(s *Store, name string, notAfter int64) {
		t.Helper()
		if err := s.rdb.ZAdd(ctx, s.keys.Expiry(), redisZ(notAfter, name)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Ties at one second, more than a page of them, and spread entries.
	for i := range inventoryPage + 10 {
		add(st, "tie"+strconv.Itoa(i)+".example.com", 1000)
	}
	for i := range 50 {
		add(st, "n"+strconv.Itoa(i)+".example.com", 1000+int64(i)*100)
	}
	got, err := st.InventoryDigests(ctx, 1000, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// Windows [1000,2000), ..., [5000,6000): 10 entries each, and the ties.
	if len(got) != 5 || got[0].Start != 1000 || got[0].Count != inventoryPage+10+10 || got[4].Start != 5000 || got[4].Count != 10 {
		t.Fatalf("windows %+v", got)
	}
	// From and to cut the range; a window is aligned on its width.
	part, err := st.InventoryDigests(ctx, 1500, 3000, 1000)
	if err != nil || len(part) != 2 || part[0].Start != 1000 || part[0].Count != 5 || part[1].Count != 10 {
		t.Fatalf("part: %+v, %v", part, err)
	}
	// Another store with the same entries, written in another order, sums
	// up alike; one renewal (a new not-after) changes one window.
	other := New(r.Client, Keys{Prefix: "other:"})
	for i := 49; i >= 0; i-- {
		add(other, "n"+strconv.Itoa(i)+".example.com", 1000+int64(i)*100)
	}
	for i := range inventoryPage + 10 {
		add(other, "tie"+strconv.Itoa(i)+".example.com", 1000)
	}
	same, _ := other.InventoryDigests(ctx, 1000, 0, 1000)
	if len(same) != len(got) || same[0] != got[0] || same[4] != got[4] {
		t.Fatalf("the same entries sum up differently: %+v, %+v", same, got)
	}
	add(other, "n33.example.com", 4301)
	renewed, _ := other.InventoryDigests(ctx, 1000, 0, 1000)
	for i := range renewed {
		if (renewed[i] == got[i]) == (i == 3) {
			t.Errorf("window %d after a renewal in it: %+v, before %+v", i, renewed[i], got[i])
		}
	}
	// Another certificate for the same name and not-after (another
	// fingerprint) changes its window too.
	if err := other.rdb.HSet(ctx, other.keys.Cert("n12.example.com"), "fingerprint", "ab12").Err(); err != nil {
		t.Fatal(err)
	}
	refetched, _ := other.InventoryDigests(ctx, 1000, 0, 1000)
	for i := range refetched {
		if (refetched[i] == renewed[i]) == (i == 1) {
			t.Errorf("window %d after another certificate in it: %+v, before %+v", i, refetched[i], renewed[i])
		}
	}
	if _, err := st.InventoryDigests(ctx, 0, 0, 0); err == nil {
		t.Error("a width of 0 was accepted")
	}
}

func TestHeldVersionsReadsFingerprintsAndDates(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	proto := recordFrom(t, base, "x.example.com")
	// More than a page; the names asked for include a second name, one
	// with no record and a corrupt one.
	var names []string
	for i := range inventoryPage + 3 {
		rec := *proto
		rec.Names = []string{"n" + strconv.Itoa(i) + ".example.com"}
		if i == 1 {
			rec.Names = append(rec.Names, "alias.example.com")
		}
		rec.Fingerprint = strconv.Itoa(i)
		rec.NotBefore = base.Add(time.Duration(i) * time.Second)
		if err := st.PutCert(ctx, &rec); err != nil {
			t.Fatal(err)
		}
		names = append(names, rec.Names[0])
	}
	r.Client.HSet(ctx, st.Keys().Cert("bad.example.com"), "fingerprint", "f", "not_before", "soon", "not_after", "1", "issued_at", "1")
	names = append(names, "alias.example.com", "none.example.com", "bad.example.com")

	got, err := st.HeldVersions(ctx, names)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(names) {
		t.Fatalf("%d versions for %d names", len(got), len(names))
	}
	for i := range inventoryPage + 3 {
		want := HeldVersion{Fingerprint: strconv.Itoa(i), NotBefore: base.Add(time.Duration(i) * time.Second).UTC(), OK: true}
		if got[i] != want {
			t.Errorf("%s: %+v, want %+v", names[i], got[i], want)
		}
	}
	n := inventoryPage + 3
	if got[n].Fingerprint != "1" || !got[n].OK {
		t.Errorf("the second name: %+v, want the copy of n1's record", got[n])
	}
	if got[n+1].OK || got[n+2].OK {
		t.Errorf("no record and a corrupt one: %+v, %+v; want neither OK", got[n+1], got[n+2])
	}
	// A record without a fingerprint is no corrupt one for GetCert either.
	r.Client.HSet(ctx, st.Keys().Cert("nofp.example.com"), "not_before", "5", "not_after", "10", "issued_at", "1")
	if got, err := st.HeldVersions(ctx, []string{"nofp.example.com"}); err != nil || len(got) != 1 ||
		got[0] != (HeldVersion{NotBefore: time.Unix(5, 0).UTC(), OK: true}) {
		t.Errorf("a record without a fingerprint: %+v, %v", got, err)
	}
	if got, err := st.HeldVersions(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("no names: %v, %v", got, err)
	}
}

// TestInventoryReadsGoPastARecordOfAnotherType: a certificate key that is
// not a hash (a corrupt record) in the expiry index stops none of the
// inventory's reads: the digests count it without a fingerprint, a page
// leaves it out, and it is held as nothing valid.
func TestInventoryReadsGoPastARecordOfAnotherType(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	rec := recordFrom(t, time.Now().Add(-time.Hour), "good.example.com")
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	bad := "bad.example.com"
	if err := r.Client.Set(ctx, st.keys.Cert(bad), "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.Client.ZAdd(ctx, st.keys.Expiry(), redisZ(rec.NotAfter.Unix(), bad)).Err(); err != nil {
		t.Fatal(err)
	}
	windows, err := st.InventoryDigests(ctx, 0, 0, 1<<40)
	if err != nil || len(windows) != 1 || windows[0].Count != 2 {
		t.Errorf("digests: %+v, %v; want one window of 2", windows, err)
	}
	entries, more, err := st.InventoryPage(ctx, 0, 0, 0, 10)
	if err != nil || more || len(entries) != 1 || entries[0].Name != "good.example.com" {
		t.Errorf("page: %+v, %v, %v; want good.example.com alone", entries, more, err)
	}
	held, err := st.HeldVersions(ctx, []string{bad, "good.example.com"})
	if err != nil || held[0].OK || held[1].Fingerprint != rec.Fingerprint {
		t.Errorf("held: %+v, %v", held, err)
	}
}
