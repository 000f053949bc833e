package store

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// TestFencedWriteIsOneRoundTrip: the certificate an order stores under its
// lease costs one round trip to Redis (the fence checked and the record
// written by one script, not WATCH, GET, MULTI/EXEC and UNWATCH), and
// writes what an unfenced PutCert writes, the order record's removal aside.
func TestFencedWriteIsOneRoundTrip(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	plain, fenced := New(r.Client, Keys{Prefix: "plain:"}), New(r.Client, Keys{Prefix: "fenced:"})
	rec := fencedRecord(t, "a.example.com")
	rec.Names = append(rec.Names, "b.example.com")
	if err := plain.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	lock, err := fenced.AcquireLock(ctx, "a.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.RecordOrder(ctx, &OrderRecord{CA: "https://ca/dir", URL: "https://ca/order/1", Names: rec.Names}); err != nil {
		t.Fatal(err)
	}
	// The script is loaded by a first write: what is counted is every
	// order's write after it.
	if err := lock.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	trips := &RoundTripsHook{}
	r.Client.AddHook(trips)
	if err := lock.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if n := trips.Count(); n != 1 {
		t.Errorf("the fenced write took %d round trips (%v), want 1", n, trips.Sent(n))
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// The fenced store wrote twice: its changes stream has the entries twice.
	want, got := dumpKeys(t, r.Client, "plain:"), dumpKeys(t, r.Client, "fenced:")
	want["changes"] = strings.Repeat(want["changes"], 2)
	delete(got, "fence:a.example.com") // the lease's
	for key := range mergeKeys(want, got) {
		if got[key] != want[key] {
			t.Errorf("the fenced write stored at %s\n%q\nwhere PutCert stores\n%q", key, got[key], want[key])
		}
	}
}

// RoundTripsHook is testenv.RoundTrips.
type RoundTripsHook = testenv.RoundTrips

func mergeKeys(a, b map[string]string) map[string]bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}

// dumpKeys reads every key under prefix, by its name without the prefix:
// its type and contents (a stream's entries without their IDs).
func dumpKeys(t *testing.T, rdb *redis.Client, prefix string) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, key := range keys {
		var v any
		switch typ := rdb.Type(ctx, key).Val(); typ {
		case "hash":
			v = rdb.HGetAll(ctx, key).Val()
		case "zset":
			v = rdb.ZRangeWithScores(ctx, key, 0, -1).Val()
		case "stream":
			var entries []string
			for _, m := range rdb.XRange(ctx, key, "-", "+").Val() {
				fields := []string{}
				for k, val := range m.Values {
					fields = append(fields, fmt.Sprint(k, "=", val))
				}
				sort.Strings(fields)
				entries = append(entries, strings.Join(fields, ","))
			}
			v = strings.Join(entries, ";") + ";"
		default:
			v = typ
		}
		out[strings.TrimPrefix(key, prefix)] = fmt.Sprint(v)
	}
	return out
}
