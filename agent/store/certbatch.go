package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// MaxCertBatch bounds the records of one PutCerts or PutCertsIfNewer call:
// one MULTI of a few thousand commands, a few MB for Redis to hold at once.
const MaxCertBatch = 500

// PutOutcome is what PutCertsIfNewer did with one record: stored, or not
// and why (ReasonSame, ReasonOlder, ReasonTombstoned).
type PutOutcome struct {
	Stored bool
	Reason string
}

// PutCerts stores recs like PutCert, all in one MULTI: a bulk import or a
// benchmark's seeding writes many records in one round trip.
func (s *Store) PutCerts(ctx context.Context, recs []*CertRecord) error {
	if err := checkBatch(recs); err != nil {
		return err
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, rec := range recs {
			s.queueCertWrite(ctx, p, rec)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storing %d certificates: %w", len(recs), err)
	}
	return nil
}

// PutCertsIfNewer is PutCertIfNewer for many records at once: the
// tombstones and the records held are read in one round trip, and the
// records found newer are written in one MULTI, which Redis drops (and the
// whole batch is looked at again) if any record or tombstone involved
// changed in between. The records must have distinct primary names.
func (s *Store) PutCertsIfNewer(ctx context.Context, recs []*CertRecord) ([]PutOutcome, error) {
	if err := checkBatch(recs); err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(recs)+1)
	seen := make(map[string]bool, len(recs))
	for _, rec := range recs {
		if seen[rec.Primary()] {
			return nil, fmt.Errorf("storing certificates: %s is the primary name of two records", rec.Primary())
		}
		seen[rec.Primary()] = true
		keys = append(keys, s.keys.Cert(rec.Primary()))
	}
	var out []PutOutcome
	err := s.watchRetry(ctx, func(tx *redis.Tx) error {
		var err error
		out, err = s.putNewer(ctx, tx, recs)
		return err
	}, append(keys, s.keys.Tombstones())...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// putNewer is one attempt of PutCertsIfNewer in tx, which WATCHes every
// key it reads.
func (s *Store) putNewer(ctx context.Context, tx *redis.Tx, recs []*CertRecord) ([]PutOutcome, error) {
	dead := make([]*redis.FloatSliceCmd, len(recs))
	held := make([]*redis.MapStringStringCmd, len(recs))
	_, err := tx.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, rec := range recs {
			dead[i] = p.ZMScore(ctx, s.keys.Tombstones(), tombstoneMembers(rec.Fingerprint, rec.Names)...)
			held[i] = p.HGetAll(ctx, s.keys.Cert(rec.Primary()))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the tombstones and the records held: %w", err)
	}
	out := make([]PutOutcome, len(recs))
	var write []*CertRecord
	for i, rec := range recs {
		out[i].Reason = whyNotNewer(rec, anyLive(dead[i].Val()), held[i].Val())
		if out[i].Reason == "" {
			write = append(write, rec)
		}
	}
	if len(write) == 0 {
		return out, nil
	}
	_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, rec := range write {
			s.queueCertWrite(ctx, p, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Stored = out[i].Reason == ""
	}
	return out, nil
}

// whyNotNewer says why rec must not replace the record held for its
// primary name (its fields f, empty when none is held), or "" when it may:
// its fingerprint is tombstoned (dead), the held record has the same
// fingerprint, or rec does not supersede it (Supersedes). A corrupt record
// is replaced: nothing about it can be newer.
func whyNotNewer(rec *CertRecord, dead bool, f map[string]string) string {
	if dead {
		return ReasonTombstoned
	}
	if len(f) == 0 {
		return ""
	}
	held, err := recordFromFields(f)
	switch {
	case err != nil:
		return ""
	case held.Fingerprint == rec.Fingerprint:
		return ReasonSame
	case !Supersedes(rec.Fingerprint, rec.NotBefore, held.Fingerprint, held.NotBefore):
		return ReasonOlder
	}
	return ""
}

// checkBatch refuses an empty batch, one over MaxCertBatch, and a record
// without names.
func checkBatch(recs []*CertRecord) error {
	if len(recs) == 0 || len(recs) > MaxCertBatch {
		return fmt.Errorf("storing certificates: %d records at once, want 1 to %d", len(recs), MaxCertBatch)
	}
	for _, rec := range recs {
		if len(rec.Names) == 0 {
			return errors.New("storing a certificate: the record has no names")
		}
	}
	return nil
}

// AnyTombstoned is Tombstoned for many certificates in one round trip:
// whether fingerprints[i] was deleted under any of names[i].
func (s *Store) AnyTombstoned(ctx context.Context, fingerprints []string, names [][]string) ([]bool, error) {
	cmds := make([]*redis.FloatSliceCmd, len(fingerprints))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, fp := range fingerprints {
			if len(names[i]) > 0 {
				cmds[i] = p.ZMScore(ctx, s.keys.Tombstones(), tombstoneMembers(fp, names[i])...)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the tombstones: %w", err)
	}
	out := make([]bool, len(fingerprints))
	for i, cmd := range cmds {
		out[i] = cmd != nil && anyLive(cmd.Val())
	}
	return out, nil
}
