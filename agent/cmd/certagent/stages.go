package main

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// stages runs the background components of the daemon, each a
// func(ctx) error that returns once its context has ended and its work is
// drained. Components are started in stages: the event sinks, then the HTTP
// endpoints, then the peer API, then the workers. At the end (a signal, or
// any component returning) the stages stop in the reverse order, each once
// the stage started after it has returned: the workers finish their orders
// while the peer API, the endpoints and the sinks still serve, and the
// sinks write their last events before Redis is closed.
type stages struct {
	ctx  context.Context // ends at a signal or when a component returns
	end  context.CancelCauseFunc
	list []*stage
}

type stage struct {
	cancel context.CancelFunc
	group  errgroup.Group
}

func newStages(parent context.Context) *stages {
	ctx, end := context.WithCancelCause(parent)
	return &stages{ctx: ctx, end: end}
}

// start runs the components of a new stage. Their context ends when their
// stage is stopped, not at the signal.
func (s *stages) start(runs ...func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(s.ctx))
	st := &stage{cancel: cancel}
	for _, run := range runs {
		st.group.Go(func() error {
			err := run(ctx)
			s.end(err) // one component stopping (or failing) stops the daemon
			return err
		})
	}
	s.list = append(s.list, st)
}

// stop ends the daemon and waits for its stages, for a start-up that
// gives up: the stages started so far stop in order.
func (s *stages) stop() {
	s.end(nil)
	_ = s.wait(func() {})
}

// wait waits for the end, calls stopping, then stops the stages last first
// and returns the first error a component returned.
func (s *stages) wait(stopping func()) error {
	<-s.ctx.Done()
	stopping()
	var first error
	for i := len(s.list) - 1; i >= 0; i-- {
		s.list[i].cancel()
		if err := s.list[i].group.Wait(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
