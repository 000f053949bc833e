// Package stages times the steps of one piece of work (a requested name from
// its stream entry to its stored certificate) for the debug log: the
// benchmark's timeline (certagent-bench timeline) splits the time around an
// order by them. A context without a trace marks nothing, so the steps cost
// nothing unless the debug log asks for them.
package stages

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Trace is the marks of one piece of work, in the order they were made.
type Trace struct {
	mu    sync.Mutex
	start time.Time
	marks []mark
}

type mark struct {
	label string
	at    time.Time
}

type traceKey struct{}

// With returns ctx carrying a new trace that starts now, and the trace.
func With(ctx context.Context) (context.Context, *Trace) {
	t := &Trace{start: time.Now()}
	return context.WithValue(ctx, traceKey{}, t), t
}

// Start is when the trace began.
func (t *Trace) Start() time.Time { return t.start }

// Mark notes that the step label ended now, in the trace ctx carries (none:
// nothing happens).
func Mark(ctx context.Context, label string) {
	t, ok := ctx.Value(traceKey{}).(*Trace)
	if !ok {
		return
	}
	now := time.Now()
	t.mu.Lock()
	t.marks = append(t.marks, mark{label: label, at: now})
	t.mu.Unlock()
}

// LogValue is the trace as "label:ms,label:ms": each step's time since the
// mark before it (the first since the trace's start), in milliseconds.
func (t *Trace) LogValue() slog.Value {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	prev := t.start
	for i, m := range t.marks {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.label)
		b.WriteByte(':')
		b.WriteString(strconv.FormatFloat(float64(m.at.Sub(prev))/float64(time.Millisecond), 'f', 1, 64))
		prev = m.at
	}
	return slog.StringValue(b.String())
}
