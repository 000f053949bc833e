package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// LockTTL is the lease of a per-name lock; its holder extends it while the
// order runs, so a crashed agent blocks a name for at most this long.
const LockTTL = 120 * time.Second

// ErrLockHeld is returned when another owner holds the lock.
var ErrLockHeld = errors.New("lock held by another agent")

// ErrLockLost is returned when the caller's lease expired or was taken over.
var ErrLockLost = errors.New("lock lost")

var (
	// Only the owner may extend or release: compare the owner id, then act.
	extendScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0`)
	releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`)
)

// Lock is a held lease on one name.
type Lock struct {
	store *Store
	name  string
	owner string
	ttl   time.Duration
}

// AcquireLock takes the lease on name for ttl, or returns ErrLockHeld.
func (s *Store) AcquireLock(ctx context.Context, name string, ttl time.Duration) (*Lock, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("locking %s: %w", name, err)
	}
	owner := hex.EncodeToString(raw[:])
	ok, err := s.rdb.SetNX(ctx, s.keys.Lock(name), owner, ttl).Result()
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", name, err)
	}
	if !ok {
		return nil, fmt.Errorf("locking %s: %w", name, ErrLockHeld)
	}
	return &Lock{store: s, name: name, owner: owner, ttl: ttl}, nil
}

// Extend renews the lease for another ttl, or returns ErrLockLost.
func (l *Lock) Extend(ctx context.Context) error {
	n, err := extendScript.Run(ctx, l.store.rdb, []string{l.store.keys.Lock(l.name)}, l.owner, l.ttl.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("extending the lock on %s: %w", l.name, err)
	}
	if n == 0 {
		return fmt.Errorf("extending the lock on %s: %w", l.name, ErrLockLost)
	}
	return nil
}

// Release gives the lease up if the caller still holds it.
func (l *Lock) Release(ctx context.Context) error {
	if err := releaseScript.Run(ctx, l.store.rdb, []string{l.store.keys.Lock(l.name)}, l.owner).Err(); err != nil {
		return fmt.Errorf("releasing the lock on %s: %w", l.name, err)
	}
	return nil
}

// KeepAlive extends the lease every ttl/3 until ctx ends. It calls lost once if
// the lease cannot be kept, so the holder can abandon its work.
func (l *Lock) KeepAlive(ctx context.Context, lost func(error)) {
	ticker := time.NewTicker(l.ttl / 3)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := l.Extend(ctx); err != nil {
				if ctx.Err() == nil {
					lost(err)
				}
				return
			}
		}
	}
}
