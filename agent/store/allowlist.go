package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// AddAllowRules adds rules (normalized exact names or "*.parent") to the
// fleet's allowlist and bumps its generation, so every agent's cached denials
// stop counting at once, and publishes the rules again (PublishRules), so
// nginx judges by the new list at once. It returns how many rules were new.
func (s *Store) AddAllowRules(ctx context.Context, rules ...string) (int64, error) {
	return s.changeAllow(ctx, true, rules)
}

// RemoveAllowRules removes rules from the allowlist and returns how many were there.
func (s *Store) RemoveAllowRules(ctx context.Context, rules ...string) (int64, error) {
	return s.changeAllow(ctx, false, rules)
}

func (s *Store) changeAllow(ctx context.Context, add bool, rules []string) (int64, error) {
	if len(rules) == 0 {
		return 0, nil
	}
	op := map[bool]string{true: "add", false: "rm"}[add]
	n, _, _, err := s.runAllowScript(ctx, allowCall{op: op, rules: rules})
	if err != nil {
		return 0, fmt.Errorf("changing the allowlist: %w", err)
	}
	return n, nil
}

// AllowRules returns the allowlist, sorted.
func (s *Store) AllowRules(ctx context.Context) ([]string, error) {
	rules, err := s.rdb.SMembers(ctx, s.keys.Allow()).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the allowlist: %w", err)
	}
	sort.Strings(rules)
	return rules, nil
}

// AllowlistAllows reports whether the allowlist holds name itself or a
// "*.parent" rule for any of its parents, in one round trip.
func (s *Store) AllowlistAllows(ctx context.Context, name string) (bool, error) {
	b := s.NewBatch()
	allows := b.AllowlistAllows(ctx, name)
	b.Exec(ctx)
	return allows()
}

// AllowlistAllows queues Store.AllowlistAllows.
func (b *Batch) AllowlistAllows(ctx context.Context, name string) func() (bool, error) {
	candidates := []any{name}
	for rest := name; ; {
		i := strings.IndexByte(rest, '.')
		if i < 0 {
			break
		}
		rest = rest[i+1:]
		candidates = append(candidates, "*."+rest)
	}
	cmd := b.p.SMIsMember(ctx, b.s.keys.Allow(), candidates...)
	return func() (bool, error) {
		found, err := cmd.Result()
		if err != nil {
			return false, fmt.Errorf("reading the allowlist for %s: %w", name, err)
		}
		return slices.Contains(found, true), nil
	}
}

// Denial is a cached refusal of a name.
type Denial struct {
	Reason string
	Until  time.Time // when the cached refusal expires
}

// Deny records in the shared negative cache that name was refused for reason,
// for ttl, under the current allowlist generation.
func (s *Store) Deny(ctx context.Context, name, reason string, ttl time.Duration) error {
	gen, err := s.allowGeneration(ctx)
	if err != nil {
		return err
	}
	if err := s.rdb.Set(ctx, s.keys.Denied(name), strconv.FormatInt(gen, 10)+" "+reason, ttl).Err(); err != nil {
		return fmt.Errorf("caching the denial of %s: %w", name, err)
	}
	return nil
}

// Denied returns the cached refusal of name, or nil when there is none or it
// was made before the allowlist last changed.
func (s *Store) Denied(ctx context.Context, name string) (*Denial, error) {
	b := s.NewBatch()
	denied := b.Denied(ctx, name)
	b.Exec(ctx)
	return denied()
}

// Denied queues Store.Denied.
func (b *Batch) Denied(ctx context.Context, name string) func() (*Denial, error) {
	val := b.p.Get(ctx, b.s.keys.Denied(name))
	ttl := b.p.PTTL(ctx, b.s.keys.Denied(name))
	gen := b.p.Get(ctx, b.s.keys.AllowGeneration())
	return func() (*Denial, error) {
		for _, cmd := range []redis.Cmder{val, ttl, gen} {
			if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
				return nil, fmt.Errorf("reading the cached denial of %s: %w", name, err)
			}
		}
		if val.Err() != nil {
			return nil, nil
		}
		stored, reason, _ := strings.Cut(val.Val(), " ")
		current := gen.Val()
		if current == "" {
			current = "0"
		}
		if stored != current {
			return nil, nil
		}
		d := &Denial{Reason: reason}
		if ttl.Val() > 0 {
			d.Until = time.Now().Add(ttl.Val())
		}
		return d, nil
	}
}

// ClearDenial drops the cached refusal of name.
func (s *Store) ClearDenial(ctx context.Context, name string) error {
	if err := s.rdb.Del(ctx, s.keys.Denied(name)).Err(); err != nil {
		return fmt.Errorf("clearing the denial of %s: %w", name, err)
	}
	return nil
}

func (s *Store) allowGeneration(ctx context.Context) (int64, error) {
	gen, err := s.rdb.Get(ctx, s.keys.AllowGeneration()).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the allowlist generation: %w", err)
	}
	return gen, nil
}

// CacheAskAllowed records that the ask URL allowed name, for ttl.
func (s *Store) CacheAskAllowed(ctx context.Context, name string, ttl time.Duration) error {
	if err := s.rdb.Set(ctx, s.keys.Ask(name), "allow", ttl).Err(); err != nil {
		return fmt.Errorf("caching the ask answer for %s: %w", name, err)
	}
	return nil
}

// AskAllowed reports whether an allowing ask answer for name is cached.
func (s *Store) AskAllowed(ctx context.Context, name string) (bool, error) {
	b := s.NewBatch()
	allowed := b.AskAllowed(ctx, name)
	b.Exec(ctx)
	return allowed()
}

// AskAllowed queues Store.AskAllowed.
func (b *Batch) AskAllowed(ctx context.Context, name string) func() (bool, error) {
	cmd := b.p.Exists(ctx, b.s.keys.Ask(name))
	return func() (bool, error) {
		n, err := cmd.Result()
		if err != nil {
			return false, fmt.Errorf("reading the ask answer for %s: %w", name, err)
		}
		return n == 1, nil
	}
}
