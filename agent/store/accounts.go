package store

import (
	"github.com/redis/go-redis/v9"

	"context"
	"fmt"
)

// ClaimAccountKey stores keyPEM as the account key for (directory, email)
// unless one is stored already, and returns the stored key and account URL
// (empty until registered): every agent of the fleet ends up with the same
// key, whoever got there first.
func (s *Store) ClaimAccountKey(ctx context.Context, directory, email, keyPEM string) (storedKeyPEM, uri string, err error) {
	key := s.keys.Account(directory, email)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSetNX(ctx, key, "key", keyPEM)
		p.HSetNX(ctx, key, "email", email)
		p.HSetNX(ctx, key, "directory", directory)
		return nil
	})
	if err != nil {
		return "", "", fmt.Errorf("storing the ACME account key: %w", err)
	}
	f, err := s.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return "", "", fmt.Errorf("reading the ACME account: %w", err)
	}
	return f["key"], f["uri"], nil
}

// SetAccountURI records the account URL the CA returned at registration.
func (s *Store) SetAccountURI(ctx context.Context, directory, email, uri string) error {
	if err := s.rdb.HSet(ctx, s.keys.Account(directory, email), "uri", uri).Err(); err != nil {
		return fmt.Errorf("storing the ACME account URL: %w", err)
	}
	return nil
}
