package store

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
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

// scriptCalls records the arguments of every EVALSHA and EVAL of one script.
type scriptCalls struct {
	hash  string
	mu    sync.Mutex
	calls [][]any
}

func (h *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if len(args) > 2 && (args[0] == "evalsha" && args[1] == h.hash || args[0] == "eval") {
			h.mu.Lock()
			h.calls = append(h.calls, args)
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestFencedWriteDeclaresEveryKeyItWrites: every key a command of the
// fenced write touches is among the script's KEYS, so Redis Cluster checks
// them all (a slot being migrated: ASK or TRYAGAIN) before the script
// writes anything, as it checks every key of a MULTI before its EXEC,
// instead of failing one command in the middle of the write and running
// the others.
func TestFencedWriteDeclaresEveryKeyItWrites(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	rec := fencedRecord(t, "a.example.com")
	rec.Names = append(rec.Names, "b.example.com")
	lock, err := st.AcquireLock(ctx, "a.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	calls := &scriptCalls{hash: fencedWriteScript.Hash()}
	r.Client.AddHook(calls)
	if err := lock.PutCert(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if len(calls.calls) == 0 {
		t.Fatal("the fenced write ran no script")
	}
	args := calls.calls[len(calls.calls)-1]
	numKeys, err := strconv.Atoi(fmt.Sprint(args[2]))
	if err != nil {
		t.Fatal(err)
	}
	declared := map[string]bool{}
	for _, k := range args[3 : 3+numKeys] {
		declared[fmt.Sprint(k)] = true
	}
	// ARGV: the token, then each command as its number of arguments and them.
	argv := args[3+numKeys+1:]
	for len(argv) > 0 {
		n, err := strconv.Atoi(fmt.Sprint(argv[0]))
		if err != nil {
			t.Fatal(err)
		}
		command := argv[1 : 1+n]
		argv = argv[1+n:]
		keys, err := r.Client.Do(ctx, append([]any{"command", "getkeys"}, command...)...).StringSlice()
		if err != nil {
			t.Fatalf("the keys of %v: %v", command, err)
		}
		for _, k := range keys {
			if !declared[k] {
				t.Errorf("%s (written by %v) is not among the script's KEYS", k, command[0])
			}
		}
	}
}
