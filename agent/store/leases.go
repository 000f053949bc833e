package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Leases held by a named holder: a peer site asks this site for the lease on
// a name before it orders, and the lease is the same lock:<name> this site's
// own agents take, so they and the peer sites exclude each other. The
// holder is the peer's "<site>/<random>", which no local owner id can equal.

// TakeLease takes the lease on name for holder for ttl, drawing the next
// fencing token as AcquireLock does (so a local agent whose lease ran out
// meanwhile cannot store its result over a newer one). A holder that asks
// again while it holds the lease (a retried request) has it extended. It
// returns an error wrapping ErrLockHeld when anyone else holds the lease.
func (s *Store) TakeLease(ctx context.Context, name, holder string, ttl time.Duration) error {
	_, err := s.acquire(ctx, name, holder, ttl)
	if errors.Is(err, ErrLockHeld) {
		if extendErr := s.extend(ctx, name, holder, 0, ttl); !errors.Is(extendErr, ErrLockLost) {
			return extendErr
		}
	}
	return err
}

// ExtendLease renews holder's lease on name for ttl, or returns an error
// wrapping ErrLockLost when holder no longer has it.
func (s *Store) ExtendLease(ctx context.Context, name, holder string, ttl time.Duration) error {
	return s.extend(ctx, name, holder, 0, ttl)
}

// ReleaseLease deletes the lease on name if holder has it, and does nothing
// otherwise.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	return s.release(ctx, name, holder)
}

// LeaseHolder returns who holds the lease on name: a peer site's
// "<site>/<random>", a local agent's owner id, or "" when nobody does.
func (s *Store) LeaseHolder(ctx context.Context, name string) (string, error) {
	holder, err := s.rdb.Get(ctx, s.keys.Lock(name)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading who holds the lease on %s: %w", name, err)
	}
	return holder, nil
}
