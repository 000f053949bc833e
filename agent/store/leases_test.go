package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLeasesForANamedHolder(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const name = "a.example.com"
	key, fence := st.Keys().Lock(name), st.Keys().Fence(name)

	if err := st.TakeLease(ctx, name, "b/1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if v := r.Client.Get(ctx, key).Val(); v != "b/1" {
		t.Errorf("lock holds %q, want the holder", v)
	}
	if ttl := r.Client.PTTL(ctx, key).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("lease TTL %s", ttl)
	}
	// Taking it draws a fence, as a local acquire does: a local agent whose
	// lease ran out cannot store over the peer's order.
	if n, _ := r.Client.Get(ctx, fence).Int64(); n != 1 {
		t.Errorf("fence %d after the take, want 1", n)
	}
	// The same holder asking again (a retried request) keeps it, longer.
	if err := st.TakeLease(ctx, name, "b/1", 2*time.Minute); err != nil {
		t.Errorf("the holder taking its lease again: %v", err)
	}
	if ttl := r.Client.PTTL(ctx, key).Val(); ttl <= time.Minute {
		t.Errorf("lease TTL %s after the second take, want it extended", ttl)
	}
	// Anyone else is refused: another site, another holder of the same site,
	// a local agent.
	for _, other := range []string{"c/1", "b/2"} {
		if err := st.TakeLease(ctx, name, other, time.Minute); !errors.Is(err, ErrLockHeld) {
			t.Errorf("TakeLease(%s) while b/1 holds it: %v, want ErrLockHeld", other, err)
		}
		if err := st.ExtendLease(ctx, name, other, time.Minute); !errors.Is(err, ErrLockLost) {
			t.Errorf("ExtendLease(%s): %v, want ErrLockLost", other, err)
		}
		if err := st.ReleaseLease(ctx, name, other); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.AcquireLock(ctx, name, time.Minute); !errors.Is(err, ErrLockHeld) {
		t.Errorf("a local agent took a peer's lease: %v", err)
	}
	if v := r.Client.Get(ctx, key).Val(); v != "b/1" {
		t.Fatalf("another holder changed the lease to %q", v)
	}
	if err := st.ExtendLease(ctx, name, "b/1", time.Minute); err != nil {
		t.Errorf("extending the held lease: %v", err)
	}
	if err := st.ReleaseLease(ctx, name, "b/1"); err != nil {
		t.Fatal(err)
	}
	if n := r.Client.Exists(ctx, key).Val(); n != 0 {
		t.Error("the lease survived its release")
	}

	// A local agent's lease refuses a peer.
	l, err := st.AcquireLock(ctx, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.TakeLease(ctx, name, "b/1", time.Minute); !errors.Is(err, ErrLockHeld) {
		t.Errorf("a peer took a local agent's lease: %v", err)
	}
	if l.Fence() != 2 {
		t.Errorf("local fence %d after a peer's take, want 2", l.Fence())
	}
}
