package acmeclient

import (
	"context"
	"sync/atomic"
	"time"
)

// answerTimeKey carries, in an order's context, the time the order spent
// publishing its DNS-01 answers and waiting for them to be visible: the
// name's DNS provider's time, not the CA's.
type answerTimeKey struct{}

// WithAnswerTime returns ctx with a counter of that time, read by AnswerTime.
func WithAnswerTime(ctx context.Context) context.Context {
	return context.WithValue(ctx, answerTimeKey{}, new(atomic.Int64))
}

// NoteAnswerTime adds d to the counter ctx carries, if any.
func NoteAnswerTime(ctx context.Context, d time.Duration) {
	if total, ok := ctx.Value(answerTimeKey{}).(*atomic.Int64); ok {
		total.Add(int64(d))
	}
}

// AnswerTime is the time the counter ctx carries holds (0 without one).
func AnswerTime(ctx context.Context) time.Duration {
	if total, ok := ctx.Value(answerTimeKey{}).(*atomic.Int64); ok {
		return time.Duration(total.Load())
	}
	return 0
}
