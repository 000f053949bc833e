package store

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certagent/certagent/agent/internal/schemadoc"
)

func TestReplaceAccountAndLoadAccount(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const dir, email = "https://ca/dir", "ops@example.com"
	if key, uri, gen, err := st.LoadAccount(ctx, dir, email); err != nil || key != "" || uri != "" || gen != 0 {
		t.Fatalf("nothing stored: key %q uri %q generation %d err %v", key, uri, gen, err)
	}
	if _, _, err := st.ClaimAccountKey(ctx, dir, email, "old-key"); err != nil {
		t.Fatal(err)
	}
	if err := st.SetAccountURI(ctx, dir, email, "https://ca/acct/1"); err != nil {
		t.Fatal(err)
	}
	if _, _, gen, err := st.LoadAccount(ctx, dir, email); err != nil || gen != 0 {
		t.Fatalf("generation %d (%v) before any registration again", gen, err)
	}
	if err := st.ReplaceAccount(ctx, dir, email, "new-key", "https://ca/acct/2"); err != nil {
		t.Fatal(err)
	}
	key, uri, gen, err := st.LoadAccount(ctx, dir, email)
	if err != nil || key != "new-key" || uri != "https://ca/acct/2" || gen != 1 {
		t.Errorf("after ReplaceAccount: key %q uri %q generation %d err %v", key, uri, gen, err)
	}
	// The CA may keep the URL: the generation still tells.
	if err := st.ReplaceAccount(ctx, dir, email, "new-key", "https://ca/acct/2"); err != nil {
		t.Fatal(err)
	}
	if _, _, gen, _ := st.LoadAccount(ctx, dir, email); gen != 2 {
		t.Errorf("generation %d after a second registration with the same URL, want 2", gen)
	}
	info, err := st.GetAccount(ctx, dir, email)
	if err != nil || info.Email != email || info.Directory != dir {
		t.Errorf("GetAccount after ReplaceAccount: %+v %v", info, err)
	}
	doc, _ := schemadoc.Load()
	docKey, _ := doc["account"].Key("t:", "account", AccountID(dir, email))
	if typ := r.Client.Type(ctx, docKey).Val(); typ != doc["account"].Type {
		t.Errorf("%s is a %s, the document says %s", docKey, typ, doc["account"].Type)
	}
}

// One agent at a time holds the account lock; the others wait for it and
// get it once it is given back, not after its TTL.
func TestLockAccountIsExclusiveAndWaits(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const dir, email = "https://ca/dir", "ops@example.com"
	var holders, most atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := st.LockAccount(ctx, dir, email, time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			n := holders.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(50 * time.Millisecond)
			holders.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Errorf("%d agents held the account lock at once", most.Load())
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("four holders took %s: the waiters waited out the TTL instead of the release", took)
	}
	doc, _ := schemadoc.Load()
	docKey, _ := doc["accountlock"].Key("t:", "account", AccountID(dir, email))
	if n := r.Client.Exists(ctx, docKey).Val(); n != 0 {
		t.Errorf("%s still exists after every unlock", docKey)
	}

	// A waiter gives up when its context ends.
	unlock, err := st.LockAccount(ctx, dir, email, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if ttl := r.Client.PTTL(ctx, docKey).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("%s TTL %s, want up to a minute", docKey, ttl)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := st.LockAccount(short, dir, email, time.Minute); err == nil {
		t.Error("a second holder got the lock while it was held")
	}
}
