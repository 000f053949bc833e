package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/certagent/certagent/agent/internal/testenv"
)

// modes runs fn against a standalone Redis, a three-node Cluster and a
// Sentinel setup, each started from Debian's binaries. The Cluster keys carry
// a hash tag, as the agent requires there.
func modes(t *testing.T, fn func(t *testing.T, st *Store, rdb redis.UniversalClient)) {
	t.Run("standalone", func(t *testing.T) {
		r := testenv.StartRedis(t)
		fn(t, New(r.Client, Keys{Prefix: "t:"}), r.Client)
	})
	t.Run("cluster", func(t *testing.T) {
		c := testenv.StartCluster(t)
		fn(t, New(c.Client, Keys{Prefix: "{t}:"}), c.Client)
	})
	t.Run("sentinel", func(t *testing.T) {
		s := testenv.StartSentinel(t)
		fn(t, New(s.Client, Keys{Prefix: "t:"}), s.Client)
	})
}

func fencedRecord(t *testing.T, name string) *CertRecord {
	t.Helper()
	chain, key := leafPEM(t, time.Now().Add(90*24*time.Hour), name)
	rec, err := NewCertRecord(chain, key, name)
	if err != nil {
		t.Fatal(err)
	}
	rec.KeyType, rec.CA, rec.IssuedAt = "ec256", "https://ca/dir", time.Now()
	return rec
}

func TestFencingRefusesAStaleHolder(t *testing.T) {
	modes(t, func(t *testing.T, st *Store, rdb redis.UniversalClient) {
		ctx := context.Background()
		const name = "a.example.com"
		old, err := st.AcquireLock(ctx, name, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		// The old holder pauses; its lease runs out (deleted here) and
		// another agent takes the name and stores its certificate.
		rdb.Del(ctx, st.keys.Lock(name))
		newer, err := st.AcquireLock(ctx, name, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if newer.Fence() <= old.Fence() {
			t.Fatalf("fence %d after %d: want it to grow", newer.Fence(), old.Fence())
		}
		if ttl := rdb.PTTL(ctx, st.keys.Fence(name)).Val(); ttl <= 0 || ttl > FenceTTL {
			t.Errorf("fence TTL %s, want (0, %s]", ttl, FenceTTL)
		}
		want := fencedRecord(t, name)
		if err := newer.PutCert(ctx, want); err != nil {
			t.Fatal(err)
		}
		changes := rdb.XLen(ctx, st.keys.Changes()).Val()

		// The old holder wakes up with its own result: refused, nothing written.
		if err := old.PutCert(ctx, fencedRecord(t, name)); !errors.Is(err, ErrFenced) {
			t.Fatalf("stale write: %v, want ErrFenced", err)
		}
		got, err := st.GetCert(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got.Fingerprint != want.Fingerprint {
			t.Error("the stale holder overwrote the newer certificate")
		}
		if n := rdb.XLen(ctx, st.keys.Changes()).Val(); n != changes {
			t.Errorf("changes grew from %d to %d on a refused write", changes, n)
		}

		// A lease that ran out with nobody taking it since still writes:
		// there is no newer result to protect.
		rdb.Del(ctx, st.keys.Lock(name))
		if err := newer.PutCert(ctx, fencedRecord(t, name)); err != nil {
			t.Errorf("write after an expired lease nobody took: %v", err)
		}

		// A lease taken while the write is being queued: WATCH drops the
		// EXEC, so the check and the write cannot be split by an acquire.
		rdb.Del(ctx, st.keys.Lock(name))
		racer, err := st.AcquireLock(ctx, "b.example.com", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		before, _ := st.GetCert(ctx, name)
		err = st.putFenced(ctx, fencedRecord(t, "b.example.com"), racer, func(p redis.Pipeliner) error {
			if _, err := st.AcquireLock(ctx, "b.example.com", time.Minute); !errors.Is(err, ErrLockHeld) {
				t.Errorf("acquire while held: %v", err)
			}
			rdb.Del(ctx, st.keys.Lock("b.example.com"))
			if _, err := st.AcquireLock(ctx, "b.example.com", time.Minute); err != nil {
				t.Errorf("acquire during the write: %v", err)
			}
			p.HSet(ctx, st.keys.Cert("b.example.com"), "fullchain", "x")
			return nil
		})
		if !errors.Is(err, ErrFenced) {
			t.Errorf("write raced by an acquire: %v, want ErrFenced", err)
		}
		if n := rdb.Exists(ctx, st.keys.Cert("b.example.com")).Val(); n != 0 {
			t.Error("the raced write reached Redis")
		}
		if after, _ := st.GetCert(ctx, name); after.Fingerprint != before.Fingerprint {
			t.Error("an unrelated record changed")
		}
	})
}

func TestReclaimTakesOverIdleEntries(t *testing.T) {
	modes(t, func(t *testing.T, st *Store, rdb redis.UniversalClient) {
		ctx := context.Background()
		if err := st.EnsureGroup(ctx, "g"); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"a.example", "b.example", "c.example"} {
			rdb.XAdd(ctx, &redis.XAddArgs{Stream: st.keys.Requests(), Values: []any{"name", n, "node", "n1"}})
		}
		// The dead agent took all three and acknowledged one.
		got, err := st.ReadRequests(ctx, "g", "dead", 10, time.Second, false)
		if err != nil || len(got) != 3 {
			t.Fatalf("read %d entries, %v", len(got), err)
		}
		if err := st.Ack(ctx, "g", got[0].ID); err != nil {
			t.Fatal(err)
		}
		// Not idle long enough: nothing to take.
		if re, err := st.ReclaimRequests(ctx, "g", "alive", time.Hour, 10); err != nil || len(re) != 0 {
			t.Fatalf("reclaim with a long bound: %d entries, %v", len(re), err)
		}
		time.Sleep(20 * time.Millisecond)
		re, err := st.ReclaimRequests(ctx, "g", "alive", 10*time.Millisecond, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(re) != 2 || re[0].Name != "b.example" || re[1].Name != "c.example" {
			t.Fatalf("reclaimed %+v, want b.example and c.example", re)
		}
		// They now belong to "alive": its own pending read returns them.
		mine, err := st.ReadRequests(ctx, "g", "alive", 10, 0, true)
		if err != nil || len(mine) != 2 {
			t.Errorf("pending of the new owner: %d entries, %v", len(mine), err)
		}
		if dead, _ := st.ReadRequests(ctx, "g", "dead", 10, 0, true); len(dead) != 0 {
			t.Errorf("the dead consumer still has %d entries", len(dead))
		}
	})
}

// keepAlive runs lock.KeepAlive until the test ends and returns a channel
// that receives what it reported when it gave the lease up.
func keepAlive(t *testing.T, lock *Lock) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lost := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lock.KeepAlive(ctx, func(err error) { lost <- err })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return lost
}

// waitHeld waits until Redis shows lock's owner holding its name (with a
// TTL), for at most a generous bound on a loaded machine.
func waitHeld(t *testing.T, st *Store, rdb redis.UniversalClient, lock *Lock, lost <-chan error) {
	t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(20 * time.Second); ; {
		select {
		case err := <-lost:
			t.Fatalf("the lease was given up: %v", err)
		default:
		}
		if rdb.Get(ctx, st.keys.Lock(lock.name)).Val() == lock.owner && rdb.PTTL(ctx, st.keys.Lock(lock.name)).Val() > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the holder never had its lease back after Redis returned")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A Redis outage shorter than the lease does not cost the holder its lease:
// the failed extensions are retried until Redis answers again. After a
// restart that kept the data the lease is extended; after one that lost it,
// the lease and its fence are taken back (nobody drew a newer token), so the
// holder's fenced write still goes through and nobody else can take the name.
func TestKeepAliveOutlastsAShortRedisOutage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"persistent", []string{"--appendonly", "yes", "--appendfsync", "always"}},
		{"data lost", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testenv.StartRedisArgs(t, tc.extra...)
			st := New(r.Client, Keys{Prefix: "t:"})
			ctx := context.Background()
			const name = "a.example.com"
			const ttl = 6 * time.Second
			lock, err := st.AcquireLock(ctx, name, ttl)
			if err != nil {
				t.Fatal(err)
			}
			lost := keepAlive(t, lock)
			// Down across the first extension (at 2 s) and the Redis
			// client's own retries of it, back before the lease runs out.
			r.Stop()
			time.Sleep(4 * time.Second)
			r.Start()
			waitHeld(t, st, r.Client, lock, lost)
			// Past the end of the lease as it stood before the outage.
			time.Sleep(ttl / 2)
			waitHeld(t, st, r.Client, lock, lost)

			if _, err := st.AcquireLock(ctx, name, ttl); !errors.Is(err, ErrLockHeld) {
				t.Errorf("another agent taking the name: %v, want ErrLockHeld", err)
			}
			if fence, _ := r.Client.Get(ctx, st.keys.Fence(name)).Int64(); fence != lock.Fence() {
				t.Errorf("fence %d, want the holder's %d", fence, lock.Fence())
			}
			if err := lock.PutCert(ctx, fencedRecord(t, name)); err != nil {
				t.Errorf("the holder's write after the outage: %v", err)
			}
		})
	}
}

// An outage longer than the lease ends it: the holder is told, once.
func TestKeepAliveGivesUpWhenTheLeaseRanOut(t *testing.T) {
	st, r := newStore(t)
	lock, err := st.AcquireLock(context.Background(), "a.example.com", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lost := keepAlive(t, lock)
	r.Stop()
	select {
	case err := <-lost:
		if err == nil {
			t.Error("lost was called with no error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the holder was never told that its lease ran out")
	}
}

// A lease another agent took (its fence drawn) is never taken back, even
// once that agent released it: the old holder is told at once.
func TestKeepAliveStopsWhenAnotherAgentTookTheName(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const name = "a.example.com"
	old, err := st.AcquireLock(ctx, name, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r.Client.Del(ctx, st.keys.Lock(name)) // ran out while the holder paused
	newer, err := st.AcquireLock(ctx, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := newer.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := old.Extend(ctx); !errors.Is(err, ErrLockLost) {
		t.Fatalf("extending after another agent's lease: %v, want ErrLockLost", err)
	}
	lost := keepAlive(t, old)
	select {
	case err := <-lost:
		if !errors.Is(err, ErrLockLost) {
			t.Errorf("lost(%v), want ErrLockLost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the old holder was never told")
	}
	if n := r.Client.Exists(ctx, st.keys.Lock(name)).Val(); n != 0 {
		t.Error("the old holder took the lease back")
	}
}

// A released lease stays released: an extension after the release (one that
// was about to be sent) does not take it back, although the fence is still
// the holder's.
func TestExtendAfterReleaseDoesNotTakeTheLeaseBack(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	lock, err := st.AcquireLock(ctx, "a.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lock.Extend(ctx); !errors.Is(err, ErrLockLost) {
		t.Errorf("extending a released lease: %v, want ErrLockLost", err)
	}
	if n := r.Client.Exists(ctx, st.keys.Lock("a.example.com")).Val(); n != 0 {
		t.Error("the released lease was taken back")
	}
}

// A holder whose fence counter Redis no longer has stores its certificate:
// after a restart without persistence (lease and fence gone) and after an
// eviction that took the fence but left the lease (a memory policy that
// evicts keys with a TTL: the fence is touched once per order, the lease
// every few seconds). Nobody drew a token since, so nothing newer is lost.
func TestPutCertTakesALostFenceBack(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	for _, lost := range []struct {
		what string
		keys func(name string) []string
	}{
		{"lease and fence", func(name string) []string { return []string{st.keys.Lock(name), st.keys.Fence(name)} }},
		{"fence only", func(name string) []string { return []string{st.keys.Fence(name)} }},
	} {
		t.Run(lost.what, func(t *testing.T) {
			name := "fence-" + strings.ReplaceAll(lost.what, " ", "-") + ".example.com"
			lock, err := st.AcquireLock(ctx, name, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			r.Client.Del(ctx, lost.keys(name)...)
			if err := lock.PutCert(ctx, fencedRecord(t, name)); err != nil {
				t.Fatalf("storing after losing the %s: %v", lost.what, err)
			}
			if got, err := r.Client.Get(ctx, st.keys.Fence(name)).Int64(); err != nil || got != lock.Fence() {
				t.Errorf("fence after the write: %d, %v; want %d", got, err, lock.Fence())
			}
			if _, err := st.GetCert(ctx, name); err != nil {
				t.Errorf("reading the stored certificate: %v", err)
			}
		})
	}
}

// A release that Redis cannot take (it is down) is tried again until Redis
// answers: the name is free soon after, not at the end of the lease.
func TestReleaseSoonFreesTheNameOnceRedisIsBack(t *testing.T) {
	r := testenv.StartRedisArgs(t, "--appendonly", "yes", "--appendfsync", "always")
	st := New(r.Client, Keys{Prefix: "t:"})
	ctx := context.Background()
	const name = "a.example.com"
	lock, err := st.AcquireLock(ctx, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	r.Stop()
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	released := make(chan struct{})
	err = lock.ReleaseSoon(short, func() { close(released) })
	cancel()
	if !Unavailable(err) {
		t.Fatalf("releasing while Redis is down: %v, want Redis unavailable", err)
	}
	r.Start()
	// The lease (a minute) is kept by the append-only file; only the
	// retried release can free the name before then.
	deadline := time.Now().Add(30 * time.Second)
	for {
		other, err := st.AcquireLock(ctx, name, time.Minute)
		if err == nil {
			if other.Fence() <= lock.Fence() {
				t.Errorf("fence %d after the release, want more than %d", other.Fence(), lock.Fence())
			}
			select {
			case <-released:
			case <-time.After(5 * time.Second):
				t.Error("done was not called after the release went through")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the name is still leased 30 s after Redis came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
