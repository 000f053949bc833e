package store

import (
	"errors"

	"github.com/redis/go-redis/v9"
)

// ErrNotFound is returned when a key the caller asked for does not exist.
var ErrNotFound = errors.New("not found")

// ErrCorrupt is returned when a stored value cannot be decoded.
var ErrCorrupt = errors.New("corrupt record")

// Store reads and writes the schema of docs/redis-schema.md. It is safe for
// concurrent use. It works with a standalone client, Sentinel or Cluster.
type Store struct {
	rdb  redis.UniversalClient
	keys Keys
}

// New returns a Store that uses rdb and names keys with keys.
func New(rdb redis.UniversalClient, keys Keys) *Store {
	return &Store{rdb: rdb, keys: keys}
}

// Keys returns the key builder of the store.
func (s *Store) Keys() Keys { return s.keys }

// Client returns the Redis client of the store.
func (s *Store) Client() redis.UniversalClient { return s.rdb }
