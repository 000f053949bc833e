package store

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// EventsMaxLen bounds the stream of events.
const EventsMaxLen = 10000

// AppendEvent adds an event (its type, the name it concerns and its JSON
// encoding) to the events stream, which operators can follow with XREAD.
func (s *Store) AppendEvent(ctx context.Context, typ, name string, data []byte) error {
	err := s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.keys.Events(), MaxLen: EventsMaxLen, Approx: true,
		Values: []any{"type", typ, "name", name, "data", data},
	}).Err()
	if err != nil {
		return fmt.Errorf("appending a %s event for %s: %w", typ, name, err)
	}
	return nil
}
