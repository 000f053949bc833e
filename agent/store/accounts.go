package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
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

// LoadAccount returns the stored key and URL of the account for (directory,
// email), empty strings when none is stored, and its generation: how often
// it was registered again (ReplaceAccount), read in the same command.
func (s *Store) LoadAccount(ctx context.Context, directory, email string) (keyPEM, uri string, generation int64, err error) {
	vals, err := s.rdb.HMGet(ctx, s.keys.Account(directory, email), "key", "uri", "generation").Result()
	if err != nil {
		return "", "", 0, fmt.Errorf("reading the ACME account: %w", err)
	}
	keyPEM, _ = vals[0].(string)
	uri, _ = vals[1].(string)
	if g, ok := vals[2].(string); ok {
		if generation, err = strconv.ParseInt(g, 10, 64); err != nil {
			return "", "", 0, fmt.Errorf("reading the ACME account: generation %q: %w", g, ErrCorrupt)
		}
	}
	return keyPEM, uri, generation, nil
}

// ReplaceAccount stores the account registered again after the CA no longer
// knew the stored one: its key (the old one, or a new one when the CA refused
// it) and its URL, and counts a generation, in one transaction, so no agent
// reads the new URL with the old key, and every agent can tell the account
// was registered again even when the CA kept its URL.
func (s *Store) ReplaceAccount(ctx context.Context, directory, email, keyPEM, uri string) error {
	key := s.keys.Account(directory, email)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "key", keyPEM, "uri", uri, "email", email, "directory", directory)
		p.HIncrBy(ctx, key, "generation", 1)
		return nil
	})
	if err != nil {
		return fmt.Errorf("storing the ACME account registered again: %w", err)
	}
	return nil
}

// accountLockPoll is how often an agent waiting for the account lock looks
// again.
const accountLockPoll = 100 * time.Millisecond

// LockAccount takes the fleet-wide lock on registering the account of
// (directory, email) again, waiting while another agent holds it, until ctx
// ends. The lock expires after ttl should its holder die; unlock gives it
// back (only if still held by this caller).
func (s *Store) LockAccount(ctx context.Context, directory, email string, ttl time.Duration) (unlock func(), err error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("locking the ACME account: %w", err)
	}
	owner, key := hex.EncodeToString(raw[:]), s.keys.AccountLock(directory, email)
	for {
		ok, err := s.rdb.SetNX(ctx, key, owner, ttl).Result()
		if err != nil {
			return nil, fmt.Errorf("locking the ACME account: %w", err)
		}
		if ok {
			return func() {
				// Given back even when the caller's context has ended, so
				// the next agent does not wait out the TTL.
				ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_ = releaseScript.Run(ctx, s.rdb, []string{key}, owner).Err()
			}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the ACME account lock: %w", context.Cause(ctx))
		case <-time.After(accountLockPoll):
		}
	}
}
