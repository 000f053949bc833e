package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RenewalState is what the agents remember about the renewal of one
// certificate between passes of their schedulers. It is reset whenever the
// certificate is written.
type RenewalState struct {
	// RenewAt is the time chosen for the renewal; zero until chosen.
	RenewAt time.Time
	// WindowStart and WindowEnd are the CA's suggested renewal window (ARI);
	// zero when the CA offers none.
	WindowStart, WindowEnd time.Time
	// ARINext is when to ask the CA for its window again; zero: no need.
	ARINext time.Time
	// Failures counts failed renewals in a row; LastError and LastFailure
	// describe the latest.
	Failures    int
	LastError   string
	LastFailure time.Time
}

func unixOrZero(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.Unix(), 10)
}

func parseUnixOrZero(s string) time.Time {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || s == "" {
		return time.Time{}
	}
	return time.Unix(v, 0).UTC()
}

func (r *RenewalState) fields() map[string]any {
	return map[string]any{
		"renew_at":     unixOrZero(r.RenewAt),
		"window_start": unixOrZero(r.WindowStart),
		"window_end":   unixOrZero(r.WindowEnd),
		"ari_next":     unixOrZero(r.ARINext),
		"failures":     strconv.Itoa(r.Failures),
		"last_error":   r.LastError,
		"last_failure": unixOrZero(r.LastFailure),
	}
}

// RenewalDue returns up to limit primary names whose renewal schedule score
// is at or before now, soonest first: ZRANGE BYSCORE, O(log n + due).
func (s *Store) RenewalDue(ctx context.Context, now time.Time, limit int64) ([]IndexEntry, error) {
	return s.rangeSchedule(ctx, "-inf", strconv.FormatInt(now.Unix(), 10), limit)
}

// NextRenewals returns the first limit entries of the renewal schedule,
// whatever their time, soonest first.
func (s *Store) NextRenewals(ctx context.Context, limit int64) ([]IndexEntry, error) {
	return s.rangeSchedule(ctx, "-inf", "+inf", limit)
}

func (s *Store) rangeSchedule(ctx context.Context, from, to string, limit int64) ([]IndexEntry, error) {
	out, err := s.rangeByTime(ctx, s.keys.Renewals(), from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the renewal schedule: %w", err)
	}
	return out, nil
}

// GetRenewal returns the renewal state of name; a name without one has the
// zero state.
func (s *Store) GetRenewal(ctx context.Context, name string) (*RenewalState, error) {
	f, err := s.rdb.HGetAll(ctx, s.keys.Renewal(name)).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the renewal state of %s: %w", name, err)
	}
	failures, _ := strconv.Atoi(f["failures"])
	return &RenewalState{
		RenewAt:     parseUnixOrZero(f["renew_at"]),
		WindowStart: parseUnixOrZero(f["window_start"]),
		WindowEnd:   parseUnixOrZero(f["window_end"]),
		ARINext:     parseUnixOrZero(f["ari_next"]),
		Failures:    failures,
		LastError:   f["last_error"],
		LastFailure: parseUnixOrZero(f["last_failure"]),
	}, nil
}

// ErrReplaced is returned by SetRenewal when the certificate it was computed
// for is no longer the stored one.
var ErrReplaced = errors.New("the certificate was replaced meanwhile")

// SetRenewal records state for the certificate stored under name, if its
// fingerprint is still fingerprint, and moves name in the schedule to next.
// The check and the writes are one transaction (WATCH), so a scheduler that
// raced with a renewal never overwrites the new certificate's fresh state.
func (s *Store) SetRenewal(ctx context.Context, name, fingerprint string, state *RenewalState, next time.Time) error {
	certKey := s.keys.Cert(name)
	err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		current, err := tx.HGet(ctx, certKey, "fingerprint").Result()
		if errors.Is(err, redis.Nil) || (err == nil && current != fingerprint) {
			return ErrReplaced
		}
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Del(ctx, s.keys.Renewal(name))
			p.HSet(ctx, s.keys.Renewal(name), state.fields())
			p.ZAdd(ctx, s.keys.Renewals(), redis.Z{Score: float64(next.Unix()), Member: name})
			if state.Failures > 0 {
				p.ZAdd(ctx, s.keys.RenewalFailures(), redis.Z{Score: float64(state.LastFailure.Unix()), Member: name})
			} else {
				p.ZRem(ctx, s.keys.RenewalFailures(), name)
			}
			return nil
		})
		return err
	}, certKey)
	if errors.Is(err, redis.TxFailedErr) {
		err = ErrReplaced
	}
	if err != nil {
		return fmt.Errorf("recording the renewal state of %s: %w", name, err)
	}
	return nil
}

// ScheduleMissing puts every name of the expiry index that has no place in
// the renewal schedule into it, due now. It walks the index in pages with
// ZRANGE (never KEYS or SCAN) and runs once when a scheduler starts, so
// certificates stored by older agents are renewed too.
func (s *Store) ScheduleMissing(ctx context.Context, now time.Time) (added int64, err error) {
	const page = 1000
	for start := int64(0); ; start += page {
		members, err := s.rdb.ZRange(ctx, s.keys.Expiry(), start, start+page-1).Result()
		if err != nil {
			return added, fmt.Errorf("reading the expiry index: %w", err)
		}
		if len(members) == 0 {
			return added, nil
		}
		zs := make([]redis.Z, len(members))
		for i, m := range members {
			zs[i] = redis.Z{Score: float64(now.Unix()), Member: m}
		}
		n, err := s.rdb.ZAddNX(ctx, s.keys.Renewals(), zs...).Result()
		if err != nil {
			return added, fmt.Errorf("filling the renewal schedule: %w", err)
		}
		added += n
		if len(members) < page {
			return added, nil
		}
	}
}

// ScheduleCount returns how many names the renewal schedule holds.
func (s *Store) ScheduleCount(ctx context.Context) (int64, error) {
	n, err := s.rdb.ZCard(ctx, s.keys.Renewals()).Result()
	if err != nil {
		return 0, fmt.Errorf("reading the renewal schedule: %w", err)
	}
	return n, nil
}

// Reschedule moves name in the renewal schedule to next, if it is there,
// without touching its state (for records the scheduler cannot read).
func (s *Store) Reschedule(ctx context.Context, name string, next time.Time) error {
	err := s.rdb.ZAddXX(ctx, s.keys.Renewals(), redis.Z{Score: float64(next.Unix()), Member: name}).Err()
	if err != nil {
		return fmt.Errorf("rescheduling %s: %w", name, err)
	}
	return nil
}

// UnscheduleSecondary removes name from the renewal schedule if the
// certificate stored under it is indexed under another (primary) name: an
// entry left behind when a certificate's primary name changed.
func (s *Store) UnscheduleSecondary(ctx context.Context, name string) error {
	return s.unscheduleUnless(ctx, name, func(tx *redis.Tx, certKey string) (bool, error) {
		names, err := tx.HGet(ctx, certKey, "names").Result()
		if errors.Is(err, redis.Nil) {
			return true, nil // gone: Unschedule's case
		}
		// Kept when it is the primary after all.
		return err != nil || strings.SplitN(names, ",", 2)[0] == name, err
	})
}

// Unschedule removes name from the renewal schedule if no certificate is
// stored under it (checked in the same transaction, so a certificate written
// meanwhile keeps its place).
func (s *Store) Unschedule(ctx context.Context, name string) error {
	return s.unscheduleUnless(ctx, name, func(tx *redis.Tx, certKey string) (bool, error) {
		n, err := tx.Exists(ctx, certKey).Result()
		return err != nil || n != 0, err
	})
}

// unscheduleUnless removes name from the renewal schedule unless keep, which
// reads the certificate key in the transaction that WATCHes it, says it
// stays. A write to the key meanwhile leaves the schedule as it is: the
// next check looks again.
func (s *Store) unscheduleUnless(ctx context.Context, name string, keep func(*redis.Tx, string) (bool, error)) error {
	certKey := s.keys.Cert(name)
	err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		if kept, err := keep(tx, certKey); kept || err != nil {
			return err
		}
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			s.dropSchedule(ctx, p, name)
			return nil
		})
		return err
	}, certKey)
	if err != nil && !errors.Is(err, redis.TxFailedErr) {
		return fmt.Errorf("unscheduling %s: %w", name, err)
	}
	return nil
}

// dropSchedule removes name's schedule entry, failure index entry and
// renewal state.
func (s *Store) dropSchedule(ctx context.Context, p redis.Pipeliner, name string) {
	p.ZRem(ctx, s.keys.Renewals(), name)
	p.ZRem(ctx, s.keys.RenewalFailures(), name)
	p.Del(ctx, s.keys.Renewal(name))
}

// FailingRenewals returns the names whose last renewal failed, most recent
// failure first, at most limit (0: all), with the failure time.
func (s *Store) FailingRenewals(ctx context.Context, limit int64) ([]IndexEntry, error) {
	stop := int64(-1)
	if limit > 0 {
		stop = limit - 1
	}
	zs, err := s.rdb.ZRevRangeWithScores(ctx, s.keys.RenewalFailures(), 0, stop).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the failing renewals: %w", err)
	}
	out := make([]IndexEntry, 0, len(zs))
	for _, z := range zs {
		name, _ := z.Member.(string)
		out = append(out, IndexEntry{Name: name, NotAfter: time.Unix(int64(z.Score), 0).UTC()})
	}
	return out, nil
}

// Only the agent that still sees the score it read moves it: the compare
// and the move are one step, so of several agents reading the same due
// entry exactly one claims it.
var claimScript = redis.NewScript(`
local score = redis.call("ZSCORE", KEYS[1], ARGV[2])
if score and tonumber(score) == tonumber(ARGV[1]) then
  redis.call("ZADD", KEYS[1], "XX", ARGV[3], ARGV[2])
  return 1
end
return 0`)

// ClaimDue moves the schedule entry e (as RenewalDue returned it) to until,
// if no other agent has moved it since, and reports whether this caller got
// it. The claimant records the real next time when it is done; if it dies
// first, the entry is due again at until.
func (s *Store) ClaimDue(ctx context.Context, e IndexEntry, until time.Time) (bool, error) {
	n, err := claimScript.Run(ctx, s.rdb, []string{s.keys.Renewals()}, e.NotAfter.Unix(), e.Name, until.Unix()).Int()
	if err != nil {
		return false, fmt.Errorf("claiming the renewal of %s: %w", e.Name, err)
	}
	return n == 1, nil
}
