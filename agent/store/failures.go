package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// FailureKeep is how long a failure record outlives its next attempt: a name
// nobody asks for any more is forgotten, one that keeps failing keeps its
// growing backoff.
const FailureKeep = 7 * 24 * time.Hour

// Failure is the memory the fleet keeps of a name that could not get a
// certificate: why, how often in a row, and when it may be tried again.
type Failure struct {
	Name        string    `json:"name"`
	LastError   string    `json:"last_error"`
	Attempts    int       `json:"attempts"` // failed orders in a row (deferrals do not count)
	LastAttempt time.Time `json:"last_attempt"`
	NextAttempt time.Time `json:"next_attempt"`
}

// RecordFailure counts one more failed attempt for name at now, stores
// reason, and sets the next attempt to now + delay(attempts), where attempts
// includes this one. Every agent sees the record.
func (s *Store) RecordFailure(ctx context.Context, name, reason string, now time.Time, delay func(attempts int) time.Duration) (*Failure, error) {
	attempts, err := s.rdb.HIncrBy(ctx, s.keys.Failure(name), "attempts", 1).Result()
	if err != nil {
		return nil, fmt.Errorf("recording the failure of %s: %w", name, err)
	}
	f := &Failure{Name: name, LastError: reason, Attempts: int(attempts), LastAttempt: now,
		NextAttempt: now.Add(delay(int(attempts)))}
	return f, s.writeFailure(ctx, f)
}

// DeferName stores reason and a next attempt for name without counting a
// failed attempt: the name itself is not at fault (a rate budget is spent, the
// ask URL is down), so its backoff does not grow.
func (s *Store) DeferName(ctx context.Context, name, reason string, now, until time.Time) (*Failure, error) {
	prev, err := s.GetFailure(ctx, name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	f := &Failure{Name: name, LastError: reason, LastAttempt: now, NextAttempt: until}
	if prev != nil {
		f.Attempts = prev.Attempts
	}
	return f, s.writeFailure(ctx, f)
}

func (s *Store) writeFailure(ctx context.Context, f *Failure) error {
	key := s.keys.Failure(f.Name)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key,
			"last_error", f.LastError,
			"attempts", strconv.Itoa(f.Attempts),
			"last_attempt", strconv.FormatInt(f.LastAttempt.Unix(), 10),
			"next_attempt", strconv.FormatInt(f.NextAttempt.Unix(), 10))
		p.ExpireAt(ctx, key, f.NextAttempt.Add(FailureKeep))
		p.ZAdd(ctx, s.keys.Failures(), redis.Z{Score: float64(f.NextAttempt.Unix()), Member: f.Name})
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording the failure of %s: %w", f.Name, err)
	}
	return nil
}

// GetFailure returns the failure record of name, or an error wrapping ErrNotFound.
func (s *Store) GetFailure(ctx context.Context, name string) (*Failure, error) {
	b := s.NewBatch()
	failure := b.GetFailure(ctx, name)
	b.Exec(ctx)
	return failure()
}

// GetFailure queues Store.GetFailure.
func (b *Batch) GetFailure(ctx context.Context, name string) func() (*Failure, error) {
	cmd := b.p.HGetAll(ctx, b.s.keys.Failure(name))
	return func() (*Failure, error) {
		fields, err := cmd.Result()
		if err != nil {
			return nil, fmt.Errorf("reading the failure record of %s: %w", name, err)
		}
		if len(fields) == 0 {
			return nil, fmt.Errorf("failure record of %s: %w", name, ErrNotFound)
		}
		return failureFromFields(name, fields)
	}
}

func failureFromFields(name string, f map[string]string) (*Failure, error) {
	attempts, err1 := strconv.Atoi(f["attempts"])
	last, err2 := strconv.ParseInt(f["last_attempt"], 10, 64)
	next, err3 := strconv.ParseInt(f["next_attempt"], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("failure record of %s: %w: %w", name, ErrCorrupt, err)
	}
	return &Failure{Name: name, LastError: f["last_error"], Attempts: attempts,
		LastAttempt: time.Unix(last, 0).UTC(), NextAttempt: time.Unix(next, 0).UTC()}, nil
}

// ClearFailure forgets the failures of name, after it got its certificate.
func (s *Store) ClearFailure(ctx context.Context, name string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		s.queueClearFailure(ctx, p, name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("clearing the failure record of %s: %w", name, err)
	}
	return nil
}

func (s *Store) queueClearFailure(ctx context.Context, p redis.Pipeliner, name string) {
	p.Del(ctx, s.keys.Failure(name))
	p.ZRem(ctx, s.keys.Failures(), name)
}

// ClearIssued is ClearIssuing and, when failed (name had a failure record),
// ClearFailure, in one round trip: what a name whose certificate is stored
// no longer needs.
func (s *Store) ClearIssued(ctx context.Context, name string, failed bool) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if failed {
			s.queueClearFailure(ctx, p, name)
		}
		p.Del(ctx, s.keys.Issuing(name))
		return nil
	})
	if err != nil {
		return fmt.Errorf("clearing the issuing mark and the failure record of %s: %w", name, err)
	}
	return nil
}

// ListFailures returns the failure records of the fleet, soonest next
// attempt first, at most limit of them (0: all). It is what a status view
// shows; index entries whose record has expired are dropped on the way.
func (s *Store) ListFailures(ctx context.Context, limit int64) ([]Failure, error) {
	stop := int64(-1)
	if limit > 0 {
		stop = limit - 1
	}
	members, err := s.rdb.ZRange(ctx, s.keys.Failures(), 0, stop).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the failure index: %w", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(members))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			cmds[i] = p.HGetAll(ctx, s.keys.Failure(m))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading failure records: %w", err)
	}
	out := make([]Failure, 0, len(members))
	var gone []any
	for i, cmd := range cmds {
		if len(cmd.Val()) == 0 {
			gone = append(gone, members[i])
			continue
		}
		f, err := failureFromFields(members[i], cmd.Val())
		if err != nil {
			return nil, err
		}
		out = append(out, *f)
	}
	if len(gone) > 0 {
		if err := s.rdb.ZRem(ctx, s.keys.Failures(), gone...).Err(); err != nil {
			return nil, fmt.Errorf("pruning the failure index: %w", err)
		}
	}
	return out, nil
}
