package peer

import (
	"context"
	"testing"
	"time"
)

// waitExtendedAt waits until every site in sites has seen its grant of the
// lease on name extended: the key's TTL in its Redis went up again. That,
// not a fixed sleep past the TTL, shows that a kept lease outlives its TTL,
// and it holds on a loaded machine; the schedule of the extensions is
// tested on simulated time (store.KeepLeaseAlive, keepalive_test.go). It
// fails when a grant runs out first.
func waitExtendedAt(t *testing.T, name string, sites ...*testSite) {
	t.Helper()
	ctx := context.Background()
	for _, s := range sites {
		key := s.st.Keys().Lock(name)
		var lowest time.Duration
		for extended := false; !extended; time.Sleep(50 * time.Millisecond) {
			left, err := s.rdb.PTTL(ctx, key).Result()
			if err != nil || left <= 0 {
				t.Fatalf("%s: the lease on %s has PTTL %v (%v) before any extension", s.id, name, left, err)
			}
			extended = lowest > 0 && left > lowest+100*time.Millisecond
			if lowest == 0 || left < lowest {
				lowest = left
			}
		}
	}
}
