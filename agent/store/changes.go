package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Change is one entry of the stream of changes: a certificate record
// written or deleted under one of its names.
type Change struct {
	ID   string // stream entry ID
	Name string
	Op   string // "put" or "delete"
	// Fingerprint is that of the certificate written or deleted; empty when
	// a corrupt record was deleted.
	Fingerprint string
}

// LastChangeID returns the ID of the newest entry of the stream of changes,
// or "0-0" when it is empty. A follower starts after it, so it sees every
// change made from then on (XREAD with "$" would lose those made between
// two reads).
func (s *Store) LastChangeID(ctx context.Context) (string, error) {
	msgs, err := s.rdb.XRevRangeN(ctx, s.keys.Changes(), "+", "-", 1).Result()
	if err != nil {
		return "", fmt.Errorf("reading the newest change: %w", err)
	}
	if len(msgs) == 0 {
		return "0-0", nil
	}
	return msgs[0].ID, nil
}

// ReadChanges returns up to count entries of the stream of changes that
// come after afterID, oldest first, waiting up to block for the first one.
// block must be positive (zero would make Redis wait forever); no entry in
// time is an empty answer, not an error. Entries trimmed from the stream are
// gone: a follower that falls more than ChangesMaxLen entries behind misses
// some, which the inventory exchange between sites repairs.
func (s *Store) ReadChanges(ctx context.Context, afterID string, block time.Duration, count int) ([]Change, error) {
	if block <= 0 {
		return nil, errors.New("reading changes: block must be positive")
	}
	streams, err := s.rdb.XRead(ctx, &redis.XReadArgs{
		Streams: []string{s.keys.Changes(), afterID},
		Count:   int64(count),
		Block:   block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading changes: %w", err)
	}
	var out []Change
	for _, st := range streams {
		for _, m := range st.Messages {
			name, _ := m.Values["name"].(string)
			op, _ := m.Values["op"].(string)
			fp, _ := m.Values["fingerprint"].(string)
			out = append(out, Change{ID: m.ID, Name: name, Op: op, Fingerprint: fp})
		}
	}
	return out, nil
}
