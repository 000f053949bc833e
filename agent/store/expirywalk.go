package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// expiryPos is a place in the expiry index, whose entries are ordered by
// not-after, then by name: just after the entry (score, name), or with name
// "" before every entry scored score.
type expiryPos struct {
	score float64
	name  string
}

func (p expiryPos) before(z redis.Z) bool {
	name, _ := z.Member.(string)
	return p.score < z.Score || (p.score == z.Score && p.name < name)
}

// expiryWalk is what walkExpiry reads of the expiry index: the entries
// after start, skipping the first offset of them, up to limit (0: all), until
// past says an entry's not-after is beyond the end (nil: no end), page
// entries a round trip.
type expiryWalk struct {
	start  expiryPos
	offset int64
	limit  int64
	past   func(score float64) bool
	page   int64
}

// fromScore is a walk of the entries scored in [from, to) (to 0: no end).
func fromScore(from, to int64) expiryWalk {
	w := expiryWalk{start: expiryPos{score: float64(from)}}
	if to != 0 {
		w.past = func(score float64) bool { return score >= float64(to) }
	}
	return w
}

// walkExpiry calls fn with the entries of the expiry index that w names, in
// order, a page at a time: the one cursor walk every reader of the index
// shares. Each page starts where the last one ended, checked by reading its
// last entry again, so a walk over a million entries costs a million
// entries, not the skipping an offset would make Redis do. When that entry
// was removed or moved meanwhile, the walk finds its place again by rank
// (ZRANK, or ZCOUNT of the entries before its not-after, O(log n)). Entries
// written or moved during the walk may be missed or seen twice. An error
// from fn ends the walk and is returned as it is.
func (s *Store) walkExpiry(ctx context.Context, w expiryWalk, fn func([]redis.Z) error) error {
	pos := w.start
	rank, err := s.expiryRank(ctx, pos)
	if err != nil {
		return fmt.Errorf("reading the expiry index %s: %w", s.keys.Expiry(), err)
	}
	rank += w.offset
	for seen := int64(0); w.limit == 0 || seen < w.limit; {
		size := w.page
		if w.limit > 0 {
			size = min(size, w.limit-seen)
		}
		zs, next, err := s.expiryPage(ctx, pos, rank, size)
		if err != nil {
			return fmt.Errorf("reading the expiry index %s: %w", s.keys.Expiry(), err)
		}
		end := len(zs)
		for end > 0 && w.past != nil && w.past(zs[end-1].Score) {
			end--
		}
		if end > 0 {
			if err := fn(zs[:end]); err != nil {
				return err
			}
		}
		if end < len(zs) || int64(len(zs)) < size {
			return nil
		}
		seen += int64(end)
		last := zs[end-1]
		name, _ := last.Member.(string)
		pos, rank = expiryPos{score: last.Score, name: name}, next
	}
	return nil
}

// expiryPage returns up to n entries of the expiry index that come after
// pos, and the rank after them. rank is where pos's successor was last
// seen (-1: unknown).
func (s *Store) expiryPage(ctx context.Context, pos expiryPos, rank, n int64) ([]redis.Z, int64, error) {
	key := s.keys.Expiry()
	if pos.name != "" && rank > 0 {
		zs, err := s.rdb.ZRangeWithScores(ctx, key, rank-1, rank+n-1).Result()
		if err != nil {
			return nil, 0, err
		}
		if len(zs) > 0 && zs[0].Member == pos.name && zs[0].Score == pos.score {
			return zs[1:], rank + int64(len(zs)) - 1, nil
		}
		// pos was removed, moved or shifted by entries written before it.
		if rank, err = s.expiryRank(ctx, pos); err != nil {
			return nil, 0, err
		}
	}
	for {
		zs, err := s.rdb.ZRangeWithScores(ctx, key, rank, rank+n-1).Result()
		if err != nil {
			return nil, 0, err
		}
		// Entries written before pos since its rank was read shift the
		// page: drop what was already seen.
		skip := 0
		for skip < len(zs) && !pos.before(zs[skip]) {
			skip++
		}
		if skip < len(zs) || int64(len(zs)) < n {
			return zs[skip:], rank + int64(len(zs)), nil
		}
		rank += n
	}
}

// expiryRank returns the rank of the first entry after pos, or of an entry
// not far before it when pos is no longer in the index (expiryPage skips up
// to pos from there).
func (s *Store) expiryRank(ctx context.Context, pos expiryPos) (int64, error) {
	key := s.keys.Expiry()
	if math.IsInf(pos.score, -1) {
		return 0, nil
	}
	if pos.name != "" {
		var rank *redis.IntCmd
		var score *redis.FloatCmd
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			rank = p.ZRank(ctx, key, pos.name)
			score = p.ZScore(ctx, key, pos.name)
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, err
		}
		if r, err := rank.Result(); err == nil && score.Val() == pos.score {
			return r + 1, nil
		}
	}
	// From a not-after, or after an entry removed or moved meanwhile: from
	// the first entry of that not-after.
	return s.rdb.ZCount(ctx, key, "-inf", "("+strconv.FormatFloat(pos.score, 'f', -1, 64)).Result()
}

// afterName is the place just after the entry name of the expiry index ("":
// before the first); name must be in it (an error wrapping ErrNotFound
// otherwise).
func (s *Store) afterName(ctx context.Context, name string) (expiryPos, error) {
	if name == "" {
		return expiryPos{score: math.Inf(-1)}, nil
	}
	score, err := s.rdb.ZScore(ctx, s.keys.Expiry(), name).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return expiryPos{}, fmt.Errorf("starting after %s: %w in the expiry index %s", name, ErrNotFound, s.keys.Expiry())
	case err != nil:
		return expiryPos{}, fmt.Errorf("reading the expiry index %s for %s: %w", s.keys.Expiry(), name, err)
	}
	return expiryPos{score: score, name: name}, nil
}
