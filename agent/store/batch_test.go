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
