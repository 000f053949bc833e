package store

import (
	"context"
	"errors"
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

// walkExpiryAfter reads the expiry index a page at a time (walkExpiry) from
// after ("": the first) up to the score until, reads each page's records
// with read and calls fn for each.
func (s *Store) walkExpiryAfter(ctx context.Context, after string, until time.Time, page int64,
	read func(context.Context, []string) ([]CheckedRecord, error), fn func(CheckedRecord) error) error {
	start, err := s.afterName(ctx, after)
	if err != nil {
		return err
	}
	end := float64(until.Unix())
	w := expiryWalk{start: start, page: page, past: func(score float64) bool { return score > end }}
	return s.walkExpiry(ctx, w, func(zs []redis.Z) error {
		names := make([]string, len(zs))
		for i, z := range zs {
			names[i], _ = z.Member.(string)
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
		return nil
	})
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
