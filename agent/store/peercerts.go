package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Why PutCertIfNewer did not store a record.
const (
	// ReasonSame: the record held for the primary name has the same
	// fingerprint.
	ReasonSame = "same"
	// ReasonOlder: the record held for the primary name is not older (see
	// Supersedes).
	ReasonOlder = "older"
	// ReasonTombstoned: the certificate was deleted here under one of its
	// names.
	ReasonTombstoned = "tombstoned"
)

// Supersedes reports whether the certificate with fingerprint and notBefore
// replaces the one held (heldFingerprint, heldNotBefore): the later
// not-before wins, and of two with the same not-before (two orders in one
// second) the greater fingerprint, so that every site keeps the same one.
// The same certificate does not supersede itself.
func Supersedes(fingerprint string, notBefore time.Time, heldFingerprint string, heldNotBefore time.Time) bool {
	if c := notBefore.Compare(heldNotBefore); c != 0 {
		return c > 0
	}
	return fingerprint > heldFingerprint
}

// watchAttempts bounds how often a conditional write is tried again when a
// concurrent write to a watched key made Redis drop its transaction.
const watchAttempts = 5

// PutCertIfNewer stores rec like PutCert (every copy, the indexes, the
// changes entries), but only when its fingerprint is not tombstoned under
// any of its names and the record held for its primary name is missing,
// corrupt or is superseded by rec (Supersedes). Otherwise it stores nothing and
// says why (ReasonSame, ReasonOlder, ReasonTombstoned). The check and the
// write are one transaction: a record or a tombstone written in between
// makes it look again.
func (s *Store) PutCertIfNewer(ctx context.Context, rec *CertRecord) (stored bool, reason string, err error) {
	out, err := s.PutCertsIfNewer(ctx, []*CertRecord{rec})
	if err != nil {
		return false, "", fmt.Errorf("storing the certificate for %s: %w", rec.Primary(), err)
	}
	return out[0].Stored, out[0].Reason, nil
}

// DeleteCertIfFingerprint deletes the record held for name (every copy,
// like DeleteCert) only if it has fingerprint, and tombstones fingerprint
// either way, so that the certificate cannot come back here from another
// site. The tombstone is kept under the held record's primary name until its
// not-after; when this site does not hold the certificate, under name for
// UnknownTombstoneLife (an existing tombstone of it keeps its time), and
// only while fewer than UnknownTombstoneRoom tombstones are live: a peer
// could otherwise fill Redis with deletions of names never held here.
// tombstoned reports whether fingerprint is tombstoned under name now.
func (s *Store) DeleteCertIfFingerprint(ctx context.Context, name, fingerprint string) (deleted, tombstoned bool, err error) {
	certKey := s.keys.Cert(name)
	err = s.watchRetry(ctx, func(tx *redis.Tx) error {
		now := time.Now()
		held, copies, err := s.heldWithFingerprint(ctx, tx, name, fingerprint)
		if err != nil {
			return err
		}
		if held == nil {
			full, err := s.tombstonesFull(ctx, tx, now)
			if err != nil {
				return err
			}
			if full {
				deleted = false
				tombstoned, err = s.tombstoned(ctx, tx, fingerprint, []string{name})
				return err
			}
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			if held != nil {
				s.queueCertDelete(ctx, p, held, copies)
				s.queueTombstone(ctx, p, fingerprint, held.Primary(), held.NotAfter, now, false)
			} else {
				s.queueTombstone(ctx, p, fingerprint, name, now.Add(UnknownTombstoneLife), now, true)
			}
			return nil
		})
		deleted, tombstoned = err == nil && held != nil, err == nil
		return err
	}, certKey)
	if err != nil {
		return false, false, fmt.Errorf("deleting the certificate for %s: %w", name, err)
	}
	return deleted, tombstoned, nil
}

// heldWithFingerprint returns the record held for name, and the names its
// copies are under, if it has fingerprint (nil otherwise: a corrupt record
// cannot be shown to have it).
func (s *Store) heldWithFingerprint(ctx context.Context, tx *redis.Tx, name, fingerprint string) (*CertRecord, []string, error) {
	f, err := tx.HGetAll(ctx, s.keys.Cert(name)).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("reading the record held: %w", err)
	}
	if len(f) == 0 {
		return nil, nil, nil
	}
	rec, err := recordFromFields(f)
	if err != nil || rec.Fingerprint != fingerprint || len(rec.Names) == 0 {
		return nil, nil, nil
	}
	copies, err := s.matchingCopies(ctx, tx, rec, name)
	if err != nil {
		return nil, nil, err
	}
	return rec, copies, nil
}

// tombstonesFull reports whether UnknownTombstoneRoom tombstones are live
// at now.
func (s *Store) tombstonesFull(ctx context.Context, tx *redis.Tx, now time.Time) (bool, error) {
	n, err := tx.ZCount(ctx, s.keys.Tombstones(), strconv.FormatInt(now.Unix(), 10), "+inf").Result()
	if err != nil {
		return false, fmt.Errorf("counting the tombstones: %w", err)
	}
	return n >= UnknownTombstoneRoom, nil
}

// watchRetry runs fn in a transaction that WATCHes keys, and runs it again
// (up to watchAttempts times) when a write to one of them made Redis drop
// the EXEC.
func (s *Store) watchRetry(ctx context.Context, fn func(*redis.Tx) error, keys ...string) error {
	var err error
	for range watchAttempts {
		err = s.rdb.Watch(ctx, fn, keys...)
		if !errors.Is(err, redis.TxFailedErr) {
			return err
		}
	}
	return fmt.Errorf("the keys kept changing during %d attempts: %w", watchAttempts, err)
}
