package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// IssuingTTL bounds how long nginx may believe an order runs or a name is
// refused after the agent that said so went quiet.
const IssuingTTL = 60 * time.Second

// IssuingState is what the agent tells nginx about a name without a
// certificate, read by the first handshake's wait.
type IssuingState string

const (
	// Issuing: an agent accepted the name and its order runs.
	Issuing IssuingState = "issuing"
	// Refused: the agent will not issue the name now.
	Refused IssuingState = "refused"
)

// MarkIssuing tells nginx that an order for name runs, so a first handshake
// waits for its certificate.
func (s *Store) MarkIssuing(ctx context.Context, name string) error {
	b := s.NewBatch()
	marked := b.MarkIssuing(ctx, name)
	b.Exec(ctx)
	return marked()
}

// MarkIssuing queues Store.MarkIssuing.
func (b *Batch) MarkIssuing(ctx context.Context, name string) func() error {
	cmd := b.p.Set(ctx, b.s.keys.Issuing(name), string(Issuing), IssuingTTL)
	return func() error {
		if err := cmd.Err(); err != nil {
			return fmt.Errorf("marking %s as being issued: %w", name, err)
		}
		return nil
	}
}

// MarkRefused tells nginx that name will not get a certificate now, so a
// first handshake stops waiting at once. reason is shown to operators.
func (s *Store) MarkRefused(ctx context.Context, name, reason string) error {
	if err := s.rdb.Set(ctx, s.keys.Issuing(name), refusedMark(reason), IssuingTTL).Err(); err != nil {
		return fmt.Errorf("marking %s as refused: %w", name, err)
	}
	return nil
}

// refusedMark is the value of a Refused mark.
func refusedMark(reason string) string { return string(Refused) + " " + oneLine(reason) }

// ClearIssuing removes the mark of name once its certificate is stored (or
// the agent lets go of it without a verdict).
func (s *Store) ClearIssuing(ctx context.Context, name string) error {
	if err := s.rdb.Del(ctx, s.keys.Issuing(name)).Err(); err != nil {
		return fmt.Errorf("clearing the issuing mark of %s: %w", name, err)
	}
	return nil
}

// IssuingMark reads the mark of name: its state and, for Refused, the
// reason. An absent mark is ("", "", nil).
func (s *Store) IssuingMark(ctx context.Context, name string) (IssuingState, string, error) {
	v, err := s.rdb.Get(ctx, s.keys.Issuing(name)).Result()
	if errors.Is(err, redis.Nil) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("reading the issuing mark of %s: %w", name, err)
	}
	state, reason, _ := strings.Cut(v, " ")
	return IssuingState(state), reason, nil
}
