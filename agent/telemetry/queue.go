package telemetry

import (
	"context"
	"sync"
	"time"
)

// queue runs a slow delivery (Redis, HTTP) on its own goroutine from a bounded
// buffer, so that emitting never waits; when the buffer is full the event is
// dropped and counted.
type queue struct {
	name    string
	deliver func(context.Context, Event)
	dropped func(sink string)

	mu     sync.RWMutex
	closed bool
	events chan Event
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newQueue(name string, size int, deliver func(context.Context, Event), dropped func(string)) *queue {
	ctx, cancel := context.WithCancel(context.Background())
	q := &queue{name: name, deliver: deliver, dropped: dropped,
		events: make(chan Event, size), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go q.run()
	return q
}

func (q *queue) Emit(_ context.Context, e Event) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if !q.closed {
		select {
		case q.events <- e:
			return
		default:
		}
	}
	if q.dropped != nil {
		q.dropped(q.name)
	}
}

func (q *queue) run() {
	defer close(q.done)
	for e := range q.events {
		q.deliver(q.ctx, e)
	}
}

// runUntil waits until ctx ends and then shuts the queue down with grace.
func (q *queue) runUntil(ctx context.Context, grace time.Duration) error {
	<-ctx.Done()
	q.shutdown(grace)
	return nil
}

// shutdown stops taking events and delivers those queued for up to grace;
// then it cancels the delivery in progress and drops the rest.
func (q *queue) shutdown(grace time.Duration) {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.events)
	}
	q.mu.Unlock()
	select {
	case <-q.done:
	case <-time.After(grace):
		q.cancel()
		<-q.done
	}
	q.cancel()
}
