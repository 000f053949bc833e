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
	if inv, err := st.Inventory(ctx); err != nil || len(inv) != 0 {
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

	inv, err := st.Inventory(ctx)
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
