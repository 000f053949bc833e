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
	// tokenReplicas is how many replicas a token write waits for.
	tokenReplicas int
}

// New returns a Store that uses rdb and names keys with keys.
func New(rdb redis.UniversalClient, keys Keys) *Store {
	return &Store{rdb: rdb, keys: keys}
}

// Keys returns the key builder of the store.
func (s *Store) Keys() Keys { return s.keys }

// WaitForReplicas makes every HTTP-01 token write wait (Redis WAIT, at most
// TokenReplicationWait) until n replicas have it, for fleets whose nginx
// reads from replicas: the CA must not ask one that has not seen the token
// yet. When fewer replicas answer in time (after a failover left none, say),
// the order goes on rather than waiting for them. Default: 0, no waiting.
func (s *Store) WaitForReplicas(n int) { s.tokenReplicas = n }
