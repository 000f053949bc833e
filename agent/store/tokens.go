package store

import (
	"context"
	"fmt"
	"time"
)

// TokenTTL is how long an HTTP-01 key authorization stays answerable.
const TokenTTL = 600 * time.Second

// PutToken makes nginx answer the HTTP-01 challenge token for name with keyAuth
// for TokenTTL.
func (s *Store) PutToken(ctx context.Context, name, token, keyAuth string) error {
	if err := s.rdb.Set(ctx, s.keys.Token(name, token), keyAuth, TokenTTL).Err(); err != nil {
		return fmt.Errorf("storing the HTTP-01 token for %s: %w", name, err)
	}
	return nil
}

// DeleteToken removes the token once its authorization is final.
func (s *Store) DeleteToken(ctx context.Context, name, token string) error {
	if err := s.rdb.Del(ctx, s.keys.Token(name, token)).Err(); err != nil {
		return fmt.Errorf("removing the HTTP-01 token for %s: %w", name, err)
	}
	return nil
}
