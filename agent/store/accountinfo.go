package store

import (
	"context"
	"fmt"
	"strings"
)

// AccountInfo is the stored ACME account for a CA and e-mail.
type AccountInfo struct {
	ID        string // the <account> part of the key
	URI       string // empty until registered
	Email     string
	Directory string
	KeyPEM    string // the account's private key: never print it
}

// GetAccount returns the account stored for (directory, email), or an error
// wrapping ErrNotFound.
func (s *Store) GetAccount(ctx context.Context, directory, email string) (*AccountInfo, error) {
	f, err := s.rdb.HGetAll(ctx, s.keys.Account(directory, email)).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the ACME account: %w", err)
	}
	if len(f) == 0 {
		return nil, fmt.Errorf("ACME account for %s at %s: %w", email, directory, ErrNotFound)
	}
	return &AccountInfo{ID: AccountID(directory, email), URI: f["uri"], Email: f["email"],
		Directory: f["directory"], KeyPEM: f["key"]}, nil
}

// StreamStatus describes the stream of requested names for one consumer group.
type StreamStatus struct {
	Length    int64 // entries in the stream
	Pending   int64 // delivered to an agent and not yet acknowledged
	Consumers int64 // agents with pending entries
	Changes   int64 // entries in the stream of changes
}

// StreamStatus reads the lengths of both streams and the pending summary of
// group. A group that does not exist yet has nothing pending.
func (s *Store) StreamStatus(ctx context.Context, group string) (*StreamStatus, error) {
	st := &StreamStatus{}
	var err error
	if st.Length, err = s.rdb.XLen(ctx, s.keys.Requests()).Result(); err != nil {
		return nil, fmt.Errorf("reading the stream of requested names: %w", err)
	}
	if st.Changes, err = s.rdb.XLen(ctx, s.keys.Changes()).Result(); err != nil {
		return nil, fmt.Errorf("reading the stream of changes: %w", err)
	}
	if st.Length == 0 {
		return st, nil
	}
	p, err := s.rdb.XPending(ctx, s.keys.Requests(), group).Result()
	if err != nil && strings.HasPrefix(err.Error(), "NOGROUP") {
		return st, nil // no agent has started with this group yet
	}
	if err != nil {
		return nil, fmt.Errorf("reading the pending entries of group %s: %w", group, err)
	}
	st.Pending, st.Consumers = p.Count, int64(len(p.Consumers))
	return st, nil
}

// CertCounts counts the stored certificates (primary names) and those
// whose not-after is at or before each of the given times, from the expiry
// index alone (ZCARD and ZCOUNT: O(log n)).
func (s *Store) CertCounts(ctx context.Context, until ...int64) (total int64, upTo []int64, err error) {
	if total, err = s.rdb.ZCard(ctx, s.keys.Expiry()).Result(); err != nil {
		return 0, nil, fmt.Errorf("reading the expiry index: %w", err)
	}
	for _, u := range until {
		n, err := s.rdb.ZCount(ctx, s.keys.Expiry(), "-inf", fmt.Sprint(u)).Result()
		if err != nil {
			return 0, nil, fmt.Errorf("reading the expiry index: %w", err)
		}
		upTo = append(upTo, n)
	}
	return total, upTo, nil
}
