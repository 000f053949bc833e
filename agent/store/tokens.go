package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// TokenTTL is how long an HTTP-01 key authorization stays answerable.
const TokenTTL = 600 * time.Second

// PutToken makes nginx answer the HTTP-01 challenge token for name with keyAuth
// for TokenTTL.
func (s *Store) PutToken(ctx context.Context, name, token, keyAuth string) error {
	return s.PutTokenFor(ctx, name, token, keyAuth, TokenTTL)
}

// PutTokenFor is PutToken for ttl: a token pushed by a peer site expires
// when it does there.
func (s *Store) PutTokenFor(ctx context.Context, name, token, keyAuth string, ttl time.Duration) error {
	// WAIT counts the writes of its own connection: a pipeline keeps the SET
	// and the WAIT on one.
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.keys.Token(name, token), keyAuth, ttl)
		if s.tokenReplicas > 0 {
			p.Do(ctx, "WAIT", s.tokenReplicas, TokenReplicationWait.Milliseconds())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storing the HTTP-01 token for %s: %w", name, err)
	}
	return nil
}

// TokenReplicationWait bounds how long a token write waits for replicas.
const TokenReplicationWait = time.Second

// DeleteToken removes the token once its authorization is final.
func (s *Store) DeleteToken(ctx context.Context, name, token string) error {
	if err := s.rdb.Del(ctx, s.keys.Token(name, token)).Err(); err != nil {
		return fmt.Errorf("removing the HTTP-01 token for %s: %w", name, err)
	}
	return nil
}

// Token returns the key authorization nginx answers for token under name,
// or "" when none is stored (it expired, was removed, or Redis lost it).
func (s *Store) Token(ctx context.Context, name, token string) (string, error) {
	keyAuth, err := s.rdb.Get(ctx, s.keys.Token(name, token)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the HTTP-01 token for %s: %w", name, err)
	}
	return keyAuth, nil
}
