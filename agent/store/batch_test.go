package store

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// refusingHook fails every pipeline before it is sent, as a client-side
// guard (a circuit breaker, a rate limiter) may.
type refusingHook struct{ err error }

func (h refusingHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h refusingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h refusingHook) ProcessPipelineHook(redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(context.Context, []redis.Cmder) error { return h.err }
}

// TestBatchThatFailsAsAWholeFailsEveryResult: a batch whose pipeline fails
// before any command got an answer leaves no result reading as an empty
// answer (no CA down, nothing parked, the mark written).
func TestBatchThatFailsAsAWholeFailsEveryResult(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	if _, err := st.MarkCADown(ctx, "https://ca/dir", "down", time.Now(), time.Second); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("refused by the client")
	r.Client.AddHook(refusingHook{refused})
	b := st.NewBatch()
	marked := b.MarkIssuing(ctx, "a.example.com")
	state := b.CADown(ctx, "https://ca/dir")
	parked := b.ParkedUntil(ctx, time.Now(), Scope{Kind: "orders", Subject: "acct"})
	b.Exec(ctx)
	if err := marked(); !errors.Is(err, refused) {
		t.Errorf("mark: %v, want the pipeline's error", err)
	}
	if s, err := state(); !errors.Is(err, refused) {
		t.Errorf("CA state: %v, %v, want the pipeline's error", s, err)
	}
	if _, _, err := parked(); !errors.Is(err, refused) {
		t.Errorf("parked scopes: %v, want the pipeline's error", err)
	}
}

// TestBatchRunsItsScriptsAfterRedisLostThem: Redis restarted (its scripts
// gone) answers NOSCRIPT to a batch's scripts, which then run on their own;
// the order record read before the lease was taken is not trusted.
func TestBatchRunsItsScriptsAfterRedisLostThem(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const name = "a.example.com"
	if err := r.Client.HSet(ctx, st.keys.Order(name), "ca", "https://ca/dir", "url", "https://ca/order/1",
		"names", name).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.Client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	b := st.NewBatch()
	checked := b.CheckBudget(ctx, Budget{Kind: "failed", Subject: name, Limit: 1, Window: time.Hour}, time.Now())
	acquired := b.AcquireLock(ctx, name, time.Minute)
	b.Exec(ctx)
	if ok, _, err := checked(); err != nil || !ok {
		t.Errorf("budget check: %v, %v, want room", ok, err)
	}
	lock, err := acquired()
	if err != nil {
		t.Fatal(err)
	}
	if lock.orderRead.Load() != nil {
		t.Error("the order record read before the lease was taken is kept")
	}
	if rec, err := lock.RunningOrder(ctx); err != nil || rec.URL != "https://ca/order/1" {
		t.Errorf("running order: %+v, %v", rec, err)
	}
}

// TestLockAnswersItsFirstRunningOrderFromTheLease: the order record read
// with the lease answers the first RunningOrder without a round trip; once
// the holder wrote the record, it is read again.
func TestLockAnswersItsFirstRunningOrderFromTheLease(t *testing.T) {
	st, r := newStore(t)
	ctx := context.Background()
	const name = "a.example.com"
	// A first lease loads the script (a new Redis has none).
	if _, err := st.AcquireLock(ctx, "first.example.com", time.Minute); err != nil {
		t.Fatal(err)
	}
	lock, err := st.AcquireLock(ctx, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	trips := &RoundTripsHook{}
	r.Client.AddHook(trips)
	if _, err := lock.RunningOrder(ctx); !errors.Is(err, ErrNotFound) || trips.Count() != 0 {
		t.Errorf("first running order: %v after %d round trips, want ErrNotFound after none", err, trips.Count())
	}
	lock2, err := st.AcquireLock(ctx, "b.example.com", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lock2.RecordOrder(ctx, &OrderRecord{CA: "https://ca/dir", URL: "https://ca/order/2", Names: []string{"b.example.com"}}); err != nil {
		t.Fatal(err)
	}
	if rec, err := lock2.RunningOrder(ctx); err != nil || rec.URL != "https://ca/order/2" {
		t.Errorf("running order after the holder recorded one: %+v, %v", rec, err)
	}
}
