package store

import (
	"context"
	"slices"

	"github.com/redis/go-redis/v9"
)

// Batch sends several of the store's commands to Redis in one round trip,
// where calling the Store's methods one after the other costs one each: the
// agent reads everything it decides on before an order at once. Redis runs
// them in the order they were queued (a plain pipeline, not a transaction).
// Each queuing method returns the result of its command, to call once Exec
// has returned; it carries the command's own error, as the Store's method
// would.
type Batch struct {
	s *Store
	p redis.Pipeliner
}

// NewBatch returns an empty Batch.
func (s *Store) NewBatch() *Batch { return &Batch{s: s, p: s.rdb.Pipeline()} }

// Exec sends the queued commands and waits for their answers. Errors are
// told by each command's result.
func (b *Batch) Exec(ctx context.Context) {
	cmds, err := b.p.Exec(ctx)
	if err == nil || slices.ContainsFunc(cmds, func(c redis.Cmder) bool { return c.Err() != nil }) {
		return
	}
	// The pipeline failed before any command got an answer or an error of
	// its own: no command may read as done.
	for _, c := range cmds {
		c.SetErr(err)
	}
}

// runQueued is the result of a script queued in a pipeline: Redis that lost
// its scripts (a restart) answers NOSCRIPT, and the script is then run on
// its own, loading it again (an extra round trip, once per Redis start).
func runQueued(ctx context.Context, s *Store, script *redis.Script, queued *redis.Cmd, keys []string, args ...any) *redis.Cmd {
	if redis.HasErrorPrefix(queued.Err(), "NOSCRIPT") {
		return script.Run(ctx, s.rdb, keys, args...)
	}
	return queued
}
