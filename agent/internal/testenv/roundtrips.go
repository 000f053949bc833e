package testenv

import (
	"context"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// RoundTrips records the requests a go-redis client sends, each a round
// trip to Redis: a command sent alone, or a pipeline (a batch of commands, a
// MULTI) sent at once. Install it with client.AddHook; it counts only while
// it runs one request at a time, as a single worker of the agent does.
type RoundTrips struct {
	mu   sync.Mutex
	sent []string
}

// Count is how many round trips were recorded so far.
func (r *RoundTrips) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sent)
}

// Sent lists the round trips recorded so far, the first n of them (all
// when n is larger): each its command, or a pipeline's commands in
// brackets.
func (r *RoundTrips) Sent(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.sent[:min(n, len(r.sent))]...)
}

func (r *RoundTrips) note(what string) {
	r.mu.Lock()
	r.sent = append(r.sent, what)
	r.mu.Unlock()
}

// DialHook opens connections unchanged: connecting is no request.
func (r *RoundTrips) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

// ProcessHook records a command sent alone.
func (r *RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.note(cmd.Name())
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook records a pipeline, with its commands.
func (r *RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		names := make([]string, len(cmds))
		for i, cmd := range cmds {
			names[i] = cmd.Name()
		}
		r.note("[" + strings.Join(names, " ") + "]")
		return next(ctx, cmds)
	}
}
