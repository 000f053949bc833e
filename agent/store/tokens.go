package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
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

// RestartedSince tells whether Redis (each master, in a Cluster) started
// after since: a token written before could have been lost, or been
// unreadable for nginx while Redis was down, so a validation that failed
// meanwhile says nothing about the name. The uptime is in whole seconds,
// counted between two times cut to the second: a restart less than two
// seconds after since may not be seen.
func (s *Store) RestartedSince(ctx context.Context, since time.Time) (bool, error) {
	if cluster, ok := s.rdb.(*redis.ClusterClient); ok {
		var restarted atomic.Bool
		err := cluster.ForEachMaster(ctx, func(ctx context.Context, master *redis.Client) error {
			r, err := startedAfter(ctx, master, since)
			if r {
				restarted.Store(true)
			}
			return err
		})
		return restarted.Load(), err
	}
	return startedAfter(ctx, s.rdb, since)
}

// startedAfter reads the server's uptime and compares it with since.
func startedAfter(ctx context.Context, rdb redis.Cmdable, since time.Time) (bool, error) {
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return false, fmt.Errorf("reading the Redis uptime: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "uptime_in_seconds:"); ok {
			uptime, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return false, fmt.Errorf("reading the Redis uptime: %q: %w", v, err)
			}
			return float64(uptime+1) < time.Since(since).Seconds(), nil
		}
	}
	return false, errors.New("reading the Redis uptime: INFO server has no uptime_in_seconds")
}
