package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
)

func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}

// recordFrom makes a record whose leaf starts at notBefore, for names.
func recordFrom(t *testing.T, notBefore time.Time, names ...string) *CertRecord {
	t.Helper()
	c := testenv.NewCert(t, testenv.CertSpec{CommonName: names[0], DNSNames: names,
		NotBefore: notBefore, NotAfter: notBefore.Add(90 * 24 * time.Hour)})
	rec, err := NewCertRecord(c.CertPEM, c.KeyPEM, names[0])
	if err != nil {
		t.Fatal(err)
	}
	rec.KeyType, rec.CA, rec.IssuedAt = "ec256", "https://ca/dir", time.Now()
	return rec
}

func TestPutCertIfNewer(t *testing.T) {
	modes(t, func(t *testing.T, st *Store, rdb redis.UniversalClient) {
		ctx := context.Background()
		day := time.Now().Add(-10 * 24 * time.Hour).Truncate(time.Second)
		current := recordFrom(t, day, "a.example.com", "b.example.com")
		put := func(rec *CertRecord, wantStored bool, wantReason string) {
			t.Helper()
			changes := rdb.XLen(ctx, st.keys.Changes()).Val()
			stored, reason, err := st.PutCertIfNewer(ctx, rec)
			if err != nil || stored != wantStored || reason != wantReason {
				t.Fatalf("PutCertIfNewer = %v, %q, %v; want %v, %q", stored, reason, err, wantStored, wantReason)
			}
			grew := rdb.XLen(ctx, st.keys.Changes()).Val() - changes
			if want := int64(len(rec.Names)); stored && grew != want || !stored && grew != 0 {
				t.Errorf("changes grew by %d (stored %v)", grew, stored)
			}
		}
		held := func(name string) string {
			t.Helper()
			got, err := st.GetCert(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			return got.Fingerprint
		}

		put(current, true, "")
		if held("b.example.com") != current.Fingerprint {
			t.Error("the copy under the second name was not written")
		}
		if rdb.ZScore(ctx, st.keys.Expiry(), "a.example.com").Val() != float64(current.NotAfter.Unix()) {
			t.Error("the expiry index was not written")
		}
		put(current, false, ReasonSame)
		put(recordFrom(t, day.Add(-time.Hour), "a.example.com"), false, ReasonOlder)
		if held("a.example.com") != current.Fingerprint {
			t.Fatal("an older record replaced the newer one")
		}
		// Of two with the same not-before, the greater fingerprint wins,
		// whichever comes first, so that every site keeps the same one.
		tie := recordFrom(t, day, "a.example.com")
		winner := max(tie.Fingerprint, current.Fingerprint)
		if tie.Fingerprint == winner {
			put(tie, true, "")
			put(current, false, ReasonOlder)
		} else {
			put(tie, false, ReasonOlder)
		}
		if held("a.example.com") != winner {
			t.Fatal("the same not-before: the smaller fingerprint is held")
		}

		newer := recordFrom(t, day.Add(time.Hour), "a.example.com", "b.example.com")
		put(newer, true, "")
		if held("a.example.com") != newer.Fingerprint || held("b.example.com") != newer.Fingerprint {
			t.Error("the newer record did not replace both copies")
		}

		// A corrupt record is replaced by anything valid.
		rdb.HSet(ctx, st.keys.Cert("c.example.com"), "fullchain", "x", "not_after", "soon")
		corrupted := recordFrom(t, day, "c.example.com")
		put(corrupted, true, "")

		// A deleted certificate does not come back, under any primary name.
		if _, err := st.DeleteCert(ctx, "a.example.com"); err != nil {
			t.Fatal(err)
		}
		put(newer, false, ReasonTombstoned)
		again := *newer
		again.Names = []string{"b.example.com", "a.example.com"}
		put(&again, false, ReasonTombstoned)
		if n := rdb.Exists(ctx, st.keys.Cert("a.example.com"), st.keys.Cert("b.example.com")).Val(); n != 0 {
			t.Errorf("%d records written for a tombstoned certificate", n)
		}
		if _, _, err := st.PutCertIfNewer(ctx, &CertRecord{}); err == nil {
			t.Error("a record without names was accepted")
		}
	})
}

func TestDeleteCertIfFingerprint(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	rec := recordFrom(t, time.Now().Add(-time.Hour), "a.example.com", "b.example.com")
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	other := recordFrom(t, time.Now().Add(-2*time.Hour), "a.example.com")
	changes := r.Client.XLen(ctx, st.keys.Changes()).Val()

	// Another fingerprint: kept, but that fingerprint is tombstoned, for a
	// bounded while since its not-after is unknown here.
	deleted, tombstoned, err := st.DeleteCertIfFingerprint(ctx, "b.example.com", other.Fingerprint)
	if err != nil || deleted || !tombstoned {
		t.Fatalf("DeleteCertIfFingerprint(other) = %v, %v, %v; want not deleted, tombstoned", deleted, tombstoned, err)
	}
	if got, err := st.GetCert(ctx, "b.example.com"); err != nil || got.Fingerprint != rec.Fingerprint {
		t.Fatalf("the held record changed: %v", err)
	}
	if n := r.Client.XLen(ctx, st.keys.Changes()).Val(); n != changes {
		t.Errorf("changes grew by %d without a record change", n-changes)
	}
	member := other.Fingerprint + ":b.example.com"
	score := r.Client.ZScore(ctx, st.keys.Tombstones(), member).Val()
	if want := float64(time.Now().Add(UnknownTombstoneLife).Unix()); math.Abs(score-want) > 5 {
		t.Errorf("tombstone of an unknown certificate until %v, want about %v", score, want)
	}
	// Told again later: the tombstone keeps its time.
	r.Client.ZAdd(ctx, st.keys.Tombstones(), redisZ(other.NotAfter.Unix(), member))
	if _, _, err := st.DeleteCertIfFingerprint(ctx, "b.example.com", other.Fingerprint); err != nil {
		t.Fatal(err)
	}
	if got := r.Client.ZScore(ctx, st.keys.Tombstones(), member).Val(); got != float64(other.NotAfter.Unix()) {
		t.Errorf("a repeated delete moved the tombstone to %v", got)
	}

	// The held fingerprint, named through a secondary name: every copy goes,
	// tombstoned under the primary name until the not-after.
	deleted, tombstoned, err = st.DeleteCertIfFingerprint(ctx, "b.example.com", rec.Fingerprint)
	if err != nil || !deleted || !tombstoned {
		t.Fatalf("DeleteCertIfFingerprint(held) = %v, %v, %v; want deleted and tombstoned", deleted, tombstoned, err)
	}
	for _, name := range rec.Names {
		if _, err := st.GetCert(ctx, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s after the delete: %v", name, err)
		}
	}
	if r.Client.ZScore(ctx, st.keys.Expiry(), "a.example.com").Err() == nil {
		t.Error("the expiry index still has the name")
	}
	if got := r.Client.ZScore(ctx, st.keys.Tombstones(), rec.Fingerprint+":a.example.com").Val(); got != float64(rec.NotAfter.Unix()) {
		t.Errorf("tombstone until %v, want the not-after %d", got, rec.NotAfter.Unix())
	}
	if n := r.Client.XLen(ctx, st.keys.Changes()).Val(); n != changes+2 {
		t.Errorf("changes grew by %d, want a delete entry per name", n-changes)
	}

	// Nothing held at all.
	if deleted, _, err := st.DeleteCertIfFingerprint(ctx, "z.example.com", rec.Fingerprint); err != nil || deleted {
		t.Errorf("nothing held: %v, %v", deleted, err)
	}
	if ok, _ := st.Tombstoned(ctx, rec.Fingerprint, "z.example.com"); !ok {
		t.Error("the fingerprint is not tombstoned under the name asked for")
	}
}

// TestUnknownTombstonesAreBounded: deletions of certificates this site does
// not hold (a peer can send them for any number of names) stop adding
// tombstones once UnknownTombstoneRoom are live; a certificate held here is
// still deleted and tombstoned, and expired tombstones make room again.
func TestUnknownTombstonesAreBounded(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	until := time.Now().Add(time.Hour).Unix()
	for start := 0; start < UnknownTombstoneRoom-1; start += 10_000 {
		zs := make([]redis.Z, 0, 10_000)
		for i := start; i < min(start+10_000, UnknownTombstoneRoom-1); i++ {
			zs = append(zs, redisZ(until, fmt.Sprintf("%064x:n%d.example.com", i, i)))
		}
		if err := r.Client.ZAdd(ctx, st.keys.Tombstones(), zs...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	fp := func(i int) string { return fmt.Sprintf("%064x", UnknownTombstoneRoom+i) }
	del := func(name, fingerprint string, wantDeleted, wantTombstoned bool) {
		t.Helper()
		deleted, tombstoned, err := st.DeleteCertIfFingerprint(ctx, name, fingerprint)
		if err != nil || deleted != wantDeleted || tombstoned != wantTombstoned {
			t.Fatalf("DeleteCertIfFingerprint(%s) = %v, %v, %v; want %v, %v", name, deleted, tombstoned, err,
				wantDeleted, wantTombstoned)
		}
	}
	// The last room, then none: the set stays at the room.
	del("u1.example.com", fp(1), false, true)
	for i := 2; i < 50; i++ {
		del(fmt.Sprintf("u%d.example.com", i), fp(i), false, false)
	}
	del("u1.example.com", fp(1), false, true) // already tombstoned
	if n := r.Client.ZCard(ctx, st.keys.Tombstones()).Val(); n != UnknownTombstoneRoom {
		t.Errorf("%d tombstones, want %d", n, UnknownTombstoneRoom)
	}
	// A certificate held here is deleted and tombstoned all the same.
	rec := recordFrom(t, time.Now().Add(-time.Hour), "held.example.com")
	if err := st.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	del("held.example.com", rec.Fingerprint, true, true)
	if dead, err := st.Tombstoned(ctx, rec.Fingerprint, "held.example.com"); err != nil || !dead {
		t.Errorf("the held certificate's tombstone: %v, %v", dead, err)
	}
	// Expired tombstones do not count: two expire (the held one took one
	// more place), and there is room again.
	for i := range 2 {
		member := fmt.Sprintf("%064x:n%d.example.com", i, i)
		if err := r.Client.ZAdd(ctx, st.keys.Tombstones(), redisZ(time.Now().Add(-time.Hour).Unix(), member)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	del("u2.example.com", fp(2), false, true)
}
