package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// recorder notes the order in which components return.
type recorder struct {
	mu    sync.Mutex
	order []string
}

func (r *recorder) component(name string, drain time.Duration) func(context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(drain)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.order = append(r.order, name)
		return nil
	}
}

// At the end the stages stop last first, each once the later ones have
// returned, however long they take to drain; the components of one stage
// stop together.
func TestStagesStopInReverseOrder(t *testing.T) {
	parent, signal := context.WithCancel(context.Background())
	s := newStages(parent)
	r := &recorder{}
	s.start(r.component("sinks", 0))
	s.start(r.component("http", 0))
	s.start(r.component("workers-slow", 100*time.Millisecond), r.component("workers-fast", 0))
	stopping := false
	go signal()
	if err := s.wait(func() { stopping = true }); err != nil {
		t.Fatal(err)
	}
	want := []string{"workers-fast", "workers-slow", "http", "sinks"}
	if !stopping || !slices.Equal(r.order, want) {
		t.Errorf("stopping called: %v; order %v, want %v", stopping, r.order, want)
	}
}

// A component that fails ends the daemon without a signal, and its error
// is what wait returns.
func TestStagesEndWhenAComponentFails(t *testing.T) {
	s := newStages(context.Background())
	r := &recorder{}
	s.start(r.component("sinks", 0))
	boom := errors.New("boom")
	s.start(func(context.Context) error { return boom }, r.component("renewer", 0))
	done := make(chan error, 1)
	go func() { done <- s.wait(func() {}) }()
	select {
	case err := <-done:
		if !errors.Is(err, boom) || !slices.Equal(r.order, []string{"renewer", "sinks"}) {
			t.Errorf("wait = %v, order %v; want boom, renewer then sinks", err, r.order)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a failed component did not end the daemon")
	}
	s.stop() // after wait: returns at once
}
