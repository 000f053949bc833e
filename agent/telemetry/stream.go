package telemetry

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/certagent/certagent/agent/store"
)

// StreamSink appends events to the events stream in Redis.
type StreamSink struct {
	q *queue
}

// streamGrace is how long the queued events may take to be written once
// the sink is stopped.
const streamGrace = 2 * time.Second

// NewStreamSink starts the delivery goroutine, so events are written at
// once; Run stops it.
func NewStreamSink(st *store.Store, metrics *Metrics, log *slog.Logger) *StreamSink {
	if log == nil {
		log = slog.Default()
	}
	deliver := func(ctx context.Context, e Event) {
		data, err := json.Marshal(e)
		if err != nil {
			log.Error("encoding an event", "error", err)
			return
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := st.AppendEvent(ctx, e.Type, e.Name, data); err != nil {
			log.Warn("event not recorded in Redis", "error", err)
		}
	}
	var dropped func(string)
	if metrics != nil {
		dropped = metrics.dropped
	}
	return &StreamSink{q: newQueue("stream", 10000, deliver, dropped)}
}

// Emit queues e, unless it is a refusal (counted, not streamed).
func (s *StreamSink) Emit(ctx context.Context, e Event) {
	if Streamed(e.Type) {
		s.q.Emit(ctx, e)
	}
}

// Run returns when ctx has ended and what was queued is written, or after
// 2 s.
func (s *StreamSink) Run(ctx context.Context) error { return s.q.runUntil(ctx, streamGrace) }
