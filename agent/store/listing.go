package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// summaryFields are the fields of a certificate record that a listing shows:
// never the chain, never the private key.
var summaryFields = []string{
	"names", "not_before", "not_after", "issuer", "serial", "fingerprint", "key_type", "ca", "issued_at",
}

// listPage is how many records one round trip of a listing reads. A page of
// summaries is a few hundred bytes a record, so a larger page than a walk's
// costs little memory and saves round trips.
const listPage = 500

// ListCerts calls fn for every certificate indexed with a not-after at or
// before until, soonest first, starting after the name after ("" for the
// first). It reads only the fields a listing shows (names, dates, issuer,
// serial, fingerprint, key type, CA, issue time) with one pipelined HMGET
// per page, never the chain or the key, so memory stays flat however many
// are stored. A Record whose fields do not decode, or a key that is not a
// hash, is a *CorruptError; a record that is not checked for what only the
// chain and key tell (see WalkCertsFrom). A name indexed but no longer
// stored is skipped. after must be in the expiry index (an error wrapping
// ErrNotFound otherwise). An error from fn ends the walk and is returned.
func (s *Store) ListCerts(ctx context.Context, after string, until time.Time, fn func(CheckedRecord) error) error {
	return s.walkExpiryAfter(ctx, after, until, listPage, s.readSummaries, func(c CheckedRecord) error {
		if errors.Is(c.Err, ErrNotFound) {
			return nil
		}
		return fn(c)
	})
}

// WalkCertsFrom is WalkCerts starting after the name after ("" for the
// first), which must be in the expiry index.
func (s *Store) WalkCertsFrom(ctx context.Context, after string, until time.Time, fn func(CheckedRecord) error) error {
	return s.walkExpiryAfter(ctx, after, until, walkPage, s.readChecked, func(c CheckedRecord) error {
		if c.Record != nil {
			c.Record.Key = ""
		}
		return fn(c)
	})
}

// expiryPos is a place in the expiry index: its entries are ordered by
// not-after, then by name.
type expiryPos struct {
	score float64
	name  string
}

func (p expiryPos) before(z redis.Z) bool {
	name, _ := z.Member.(string)
	return p.score < z.Score || (p.score == z.Score && p.name < name)
}

// walkExpiryAfter reads the expiry index a page at a time from after up to the
// score until, reads each page's records with read and calls fn for each.
// Each page starts at the rank of the last entry seen (ZRANK, O(log n)), not
// at an offset Redis would have to count up to, so a walk over a million
// entries costs a million entries, not half a million pages of skipping.
// Entries written or moved during the walk may be missed or seen twice.
func (s *Store) walkExpiryAfter(ctx context.Context, after string, until time.Time, page int64,
	read func(context.Context, []string) ([]CheckedRecord, error), fn func(CheckedRecord) error) error {
	var pos *expiryPos
	if after != "" {
		score, err := s.rdb.ZScore(ctx, s.keys.Expiry(), after).Result()
		switch {
		case errors.Is(err, redis.Nil):
			return fmt.Errorf("starting after %s: %w in the expiry index %s", after, ErrNotFound, s.keys.Expiry())
		case err != nil:
			return fmt.Errorf("reading the expiry index %s for %s: %w", s.keys.Expiry(), after, err)
		}
		pos = &expiryPos{score: score, name: after}
	}
	for {
		entries, err := s.expiryPage(ctx, pos, page)
		if err != nil {
			return fmt.Errorf("reading the expiry index %s: %w", s.keys.Expiry(), err)
		}
		names := make([]string, 0, len(entries))
		for _, z := range entries {
			if z.Score > float64(until.Unix()) {
				break
			}
			name, _ := z.Member.(string)
			names = append(names, name)
		}
		if len(names) == 0 {
			return nil
		}
		checked, err := read(ctx, names)
		if err != nil {
			return err
		}
		for _, c := range checked {
			if err := fn(c); err != nil {
				return err
			}
		}
		if len(names) < len(entries) || int64(len(entries)) < page {
			return nil
		}
		last := entries[len(entries)-1]
		pos = &expiryPos{score: last.Score, name: names[len(names)-1]}
	}
}

// expiryPage returns up to n entries of the expiry index that come after
// pos (nil: from the first), with their scores.
func (s *Store) expiryPage(ctx context.Context, pos *expiryPos, n int64) ([]redis.Z, error) {
	key := s.keys.Expiry()
	start := int64(0)
	if pos != nil {
		var rank *redis.IntCmd
		var score *redis.FloatCmd
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			rank = p.ZRank(ctx, key, pos.name)
			score = p.ZScore(ctx, key, pos.name)
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		if r, err := rank.Result(); err == nil && score.Val() == pos.score {
			start = r + 1
		} else {
			// The last entry seen was removed or moved meanwhile: start at
			// the first entry of its not-after and skip up to it below.
			below, err := s.rdb.ZCount(ctx, key, "-inf", "("+strconv.FormatFloat(pos.score, 'f', -1, 64)).Result()
			if err != nil {
				return nil, err
			}
			start = below
		}
	}
	for {
		zs, err := s.rdb.ZRangeWithScores(ctx, key, start, start+n-1).Result()
		if err != nil || pos == nil {
			return zs, err
		}
		// Entries written before pos since its rank was read shift the
		// page: drop what was already seen.
		skip := 0
		for skip < len(zs) && !pos.before(zs[skip]) {
			skip++
		}
		if skip < len(zs) || int64(len(zs)) < n {
			return zs[skip:], nil
		}
		start += n
	}
}

// readSummaries reads the shown fields of the records stored under names in
// one round trip (HMGET). Only a failure to talk to Redis is returned as an
// error.
func (s *Store) readSummaries(ctx context.Context, names []string) ([]CheckedRecord, error) {
	return s.readRecords(ctx, names, func(p redis.Pipeliner, key string) func() (map[string]string, error) {
		cmd := p.HMGet(ctx, key, summaryFields...)
		return func() (map[string]string, error) {
			values, err := cmd.Result()
			f := make(map[string]string, len(summaryFields))
			for j, v := range values {
				if str, ok := v.(string); ok {
					f[summaryFields[j]] = str
				}
			}
			return f, err
		}
	}, summaryRecord)
}
