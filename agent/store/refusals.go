package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Refusal kinds: the fields of the refusals hash.
const (
	RefusedByPolicy = "policy"  // no allow rule (static, file, allowlist, ask URL) allows the name
	RefusedInvalid  = "invalid" // not a valid host name
)

// MarkRefusedCounted is MarkRefused for a refusal that is counted instead of
// evented: the mark (when name is not empty) and one more of kind in the
// refusals hash, in one round trip.
func (s *Store) MarkRefusedCounted(ctx context.Context, name, reason, kind string, now time.Time) error {
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if name != "" {
			p.Set(ctx, s.keys.Issuing(name), refusedMark(reason), IssuingTTL)
		}
		p.HIncrBy(ctx, s.keys.Refusals(), kind, 1)
		p.HSet(ctx, s.keys.Refusals(), "last_"+kind, now.Unix())
		return nil
	})
	if err != nil {
		return fmt.Errorf("marking %q as refused (%s): %w", name, kind, err)
	}
	return nil
}

// RefusalCount is how many names of one kind the agents refused, and when
// the last one was.
type RefusalCount struct {
	Count int64     `json:"count"`
	Last  time.Time `json:"last,omitzero"`
}

// RefusalCounts reads the refusals hash: by kind, the names refused since it
// was created.
func (s *Store) RefusalCounts(ctx context.Context) (map[string]RefusalCount, error) {
	h, err := s.rdb.HGetAll(ctx, s.keys.Refusals()).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("reading the refusal counts: %w", err)
	}
	out := map[string]RefusalCount{}
	for _, kind := range []string{RefusedByPolicy, RefusedInvalid} {
		var c RefusalCount
		c.Count, _ = strconv.ParseInt(h[kind], 10, 64)
		if unix, err := strconv.ParseInt(h["last_"+kind], 10, 64); err == nil {
			c.Last = time.Unix(unix, 0).UTC()
		}
		out[kind] = c
	}
	return out, nil
}
