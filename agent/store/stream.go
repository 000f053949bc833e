package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Request is one entry of the stream of requested names. Anyone who may
// append to the stream writes its fields, so both went through cleanField.
type Request struct {
	ID   string // stream entry ID
	Name string // as nginx wrote it; the consumer normalizes it again
	Node string // the nginx host that saw the name
	// NoName says the entry has no name field (nginx always writes one):
	// Name is then empty, and no name anyone asked for.
	NoName bool
}

func requestOf(m redis.XMessage) Request {
	name, ok := m.Values["name"].(string)
	node, _ := m.Values["node"].(string)
	return Request{ID: m.ID, Name: cleanField(name), Node: cleanField(node), NoName: !ok}
}

// maxField is the longest stream field kept as it is: a host name of 253
// characters, its trailing dot, and one more.
const maxField = 255

// cutField is how much of a longer field is kept, for the logs.
const cutField = 64

// cleanField returns v when it is at most maxField bytes of printable ASCII.
// Anything else (a 100 KB value, CR or LF, a NUL, UTF-8) becomes a bounded
// copy: the bytes outside printable ASCII as \xHH, cut after cutField bytes
// with the length of the original. The copy is never a valid host name (a
// backslash, or the ellipsis of the cut), so the check of a name still
// refuses it, and a log line or an event quoting it stays short and on one
// line.
func cleanField(v string) string {
	clean := len(v) <= maxField
	for i := 0; clean && i < len(v); i++ {
		clean = v[i] > ' ' && v[i] < 0x7f
	}
	if clean {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v) && i < cutField; i++ {
		if c := v[i]; c > ' ' && c < 0x7f && c != '\\' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "\\x%02x", c)
		}
	}
	if len(v) > cutField {
		fmt.Fprintf(&b, "…[%d bytes]", len(v))
	}
	return b.String()
}

// EnsureGroup creates the consumer group at the start of the stream (creating
// the stream too) unless it exists, so names recorded before the first agent
// started are handled.
func (s *Store) EnsureGroup(ctx context.Context, group string) error {
	err := s.rdb.XGroupCreateMkStream(ctx, s.keys.Requests(), group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("creating consumer group %s: %w", group, err)
	}
	return nil
}

// ReadRequests returns up to count entries for consumer. With pending false it
// waits up to block for new entries (block must be positive: zero would make
// Redis wait forever); with pending true it returns the entries already
// delivered to this consumer and not yet acknowledged, without waiting.
func (s *Store) ReadRequests(ctx context.Context, group, consumer string, count int64, block time.Duration, pending bool) ([]Request, error) {
	if !pending && block <= 0 {
		return nil, errors.New("reading requests: block must be positive")
	}
	if pending {
		return s.ReadPending(ctx, group, consumer, count, "0")
	}
	return s.readGroup(ctx, &redis.XReadGroupArgs{
		Group:    group,
		Consumer: consumer,
		Streams:  []string{s.keys.Requests(), ">"},
		Count:    count,
		Block:    block,
	})
}

// ReadPending returns up to count entries delivered to consumer and not yet
// acknowledged whose IDs come after after ("0": from the start), without
// waiting. Walking the list by ID lets a caller go through its pending
// entries once even while some of them stay pending.
func (s *Store) ReadPending(ctx context.Context, group, consumer string, count int64, after string) ([]Request, error) {
	return s.readGroup(ctx, &redis.XReadGroupArgs{
		Group:    group,
		Consumer: consumer,
		Streams:  []string{s.keys.Requests(), after},
		Count:    count,
		Block:    -1, // no BLOCK argument
	})
}

func (s *Store) readGroup(ctx context.Context, args *redis.XReadGroupArgs) ([]Request, error) {
	streams, err := s.rdb.XReadGroup(ctx, args).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading requested names: %w", err)
	}
	var out []Request
	for _, st := range streams {
		for _, m := range st.Messages {
			out = append(out, requestOf(m))
		}
	}
	return out, nil
}

// Ack marks entries as handled.
func (s *Store) Ack(ctx context.Context, group string, ids ...string) error {
	if err := s.rdb.XAck(ctx, s.keys.Requests(), group, ids...).Err(); err != nil {
		return fmt.Errorf("acknowledging requests: %w", err)
	}
	return nil
}

// ReclaimRequests takes over up to count entries that were delivered to any
// consumer of group (this one included) and not acknowledged for at least
// minIdle, and returns them as delivered to consumer. This is how the entries
// of an agent that died, or of a name whose lease was held elsewhere, are
// handled after all. Entries trimmed from the stream meanwhile are dropped
// from the pending list by Redis and not returned.
func (s *Store) ReclaimRequests(ctx context.Context, group, consumer string, minIdle time.Duration, count int64) ([]Request, error) {
	var out []Request
	start := "0-0"
	for {
		msgs, next, err := s.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: s.keys.Requests(), Group: group, Consumer: consumer,
			MinIdle: minIdle, Start: start, Count: count - int64(len(out)),
		}).Result()
		if err != nil {
			return out, fmt.Errorf("reclaiming idle requested names: %w", err)
		}
		for _, m := range msgs {
			out = append(out, requestOf(m))
		}
		// "0-0" means the whole pending list was scanned.
		if next == "0-0" || next == "" || int64(len(out)) >= count {
			return out, nil
		}
		start = next
	}
}
