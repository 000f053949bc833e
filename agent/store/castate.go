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

// CADownTTL bounds how long a CA stays marked down after the last agent that
// probed it went quiet: a fleet that stopped altogether does not come back
// to a stale verdict.
const CADownTTL = 10 * time.Minute

// RequestsMaxLen is the cap of the requests stream, the same nginx applies
// (stream_maxlen).
const RequestsMaxLen = 10000

// CAState is the fleet's record of a CA that is down.
type CAState struct {
	Directory string
	// Reason is the outage as first seen and then as the latest probe saw it.
	Reason string
	// Since is when the first agent saw the CA fail.
	Since time.Time
	// NextProbe is when an agent probes the CA next.
	NextProbe time.Time
	// Probes counts the probes that failed so far.
	Probes int
}

var (
	// The agent that creates the record is the one that noticed the outage;
	// the others only update the reason. The first probe is due at once plus
	// the first pause.
	markCADownScript = redis.NewScript(`
local created = redis.call("HSETNX", KEYS[1], "since", ARGV[3])
redis.call("HSET", KEYS[1], "directory", ARGV[1], "reason", ARGV[2])
if created == 1 then
  redis.call("HSET", KEYS[1], "next_probe", ARGV[4], "probes", "0")
end
redis.call("PEXPIRE", KEYS[1], ARGV[5])
return created`)
	// One agent of the fleet probes at a time: the probe is due when
	// next_probe has passed, and taking it moves next_probe by a pause that
	// doubles from ARGV[2] to ARGV[3] ms.
	claimProbeScript = redis.NewScript(`
local next_probe = tonumber(redis.call("HGET", KEYS[1], "next_probe"))
if not next_probe then return -1 end
local now = tonumber(ARGV[1])
if next_probe > now then return 0 end
local probes = redis.call("HINCRBY", KEYS[1], "probes", 1)
local pause = tonumber(ARGV[2])
for i = 2, probes do
  pause = pause * 2
  if pause >= tonumber(ARGV[3]) then break end
end
pause = math.min(pause, tonumber(ARGV[3]))
redis.call("HSET", KEYS[1], "next_probe", tostring(now + pause))
redis.call("PEXPIRE", KEYS[1], ARGV[4])
return probes`)
	// The waiting names go back to the stream in the same script that
	// forgets them, so a crash between the two loses none.
	resumeWaitingScript = redis.NewScript(`
local pairs = redis.call("HGETALL", KEYS[1])
if #pairs == 0 then return {} end
local names = {}
for i = 1, #pairs, 2 do
  redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[1], "*", "name", pairs[i], "node", pairs[i + 1])
  names[#names + 1] = pairs[i]
end
redis.call("DEL", KEYS[1])
return names`)
)

// MarkCADown records that the CA of directory is down for reason at now, and
// reports whether this call noticed it first (the record did not exist).
func (s *Store) MarkCADown(ctx context.Context, directory, reason string, now time.Time, firstProbe time.Duration) (bool, error) {
	created, err := markCADownScript.Run(ctx, s.rdb, []string{s.keys.CADown(directory)},
		directory, oneLine(reason), now.UnixMilli(), now.Add(firstProbe).UnixMilli(), CADownTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("recording that the CA %s is down: %w", directory, err)
	}
	return created == 1, nil
}

// CADown returns the record of the CA of directory when it is down, or nil
// when it is not.
func (s *Store) CADown(ctx context.Context, directory string) (*CAState, error) {
	b := s.NewBatch()
	state := b.CADown(ctx, directory)
	b.Exec(ctx)
	return state()
}

// CADown queues Store.CADown.
func (b *Batch) CADown(ctx context.Context, directory string) func() (*CAState, error) {
	cmd := b.p.HGetAll(ctx, b.s.keys.CADown(directory))
	return func() (*CAState, error) {
		f, err := cmd.Result()
		if err != nil {
			return nil, fmt.Errorf("reading the state of the CA %s: %w", directory, err)
		}
		return caStateFromFields(directory, f), nil
	}
}

// caStateFromFields decodes the record of the CA of directory; nil when
// there is none.
func caStateFromFields(directory string, f map[string]string) *CAState {
	if len(f) == 0 {
		return nil
	}
	since, err1 := strconv.ParseInt(f["since"], 10, 64)
	next, err2 := strconv.ParseInt(f["next_probe"], 10, 64)
	probes, err3 := strconv.Atoi(f["probes"])
	if err := errors.Join(err1, err2, err3); err != nil {
		// A record half-written by hand still says the CA is down.
		return &CAState{Directory: directory, Reason: f["reason"]}
	}
	return &CAState{Directory: directory, Reason: f["reason"], Since: time.UnixMilli(since),
		NextProbe: time.UnixMilli(next), Probes: probes}
}

// ClaimCAProbe reports whether the caller is the agent that probes the CA of
// directory now; it pushes the next probe back by a pause doubling from
// first to most with every probe. It is false when the CA is not down.
func (s *Store) ClaimCAProbe(ctx context.Context, directory string, now time.Time, first, most time.Duration) (bool, error) {
	n, err := claimProbeScript.Run(ctx, s.rdb, []string{s.keys.CADown(directory)},
		now.UnixMilli(), first.Milliseconds(), most.Milliseconds(), CADownTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("taking the probe of the CA %s: %w", directory, err)
	}
	return n > 0, nil
}

// ClearCADown records that the CA of directory answers again.
func (s *Store) ClearCADown(ctx context.Context, directory string) error {
	if err := s.rdb.Del(ctx, s.keys.CADown(directory)).Err(); err != nil {
		return fmt.Errorf("recording that the CA %s answers again: %w", directory, err)
	}
	return nil
}

// WaitForCA keeps name, requested by node, until a CA answers again. It is
// written before the name's stream entry is acknowledged, so the name is
// never lost in between.
func (s *Store) WaitForCA(ctx context.Context, name, node string) error {
	if err := s.rdb.HSet(ctx, s.keys.CAWaiting(), name, node).Err(); err != nil {
		return fmt.Errorf("keeping %s until the CA answers: %w", name, err)
	}
	return nil
}

// WaitingForCA returns up to limit names that wait for a CA (in no order).
func (s *Store) WaitingForCA(ctx context.Context, limit int64) ([]string, error) {
	var out []string
	var cursor uint64
	for {
		keys, next, err := s.rdb.HScan(ctx, s.keys.CAWaiting(), cursor, "*", limit).Result()
		if err != nil {
			return out, fmt.Errorf("reading the names waiting for the CA: %w", err)
		}
		for i := 0; i < len(keys); i += 2 {
			out = append(out, keys[i])
		}
		if next == 0 || int64(len(out)) >= limit {
			return out, nil
		}
		cursor = next
	}
}

// CountWaitingForCA returns how many names wait for a CA.
func (s *Store) CountWaitingForCA(ctx context.Context) (int64, error) {
	n, err := s.rdb.HLen(ctx, s.keys.CAWaiting()).Result()
	if err != nil {
		return 0, fmt.Errorf("counting the names waiting for the CA: %w", err)
	}
	return n, nil
}

// ResumeWaiting puts every name waiting for a CA back into the requests
// stream, where the agents take them up as if nginx had recorded them, and
// returns them.
func (s *Store) ResumeWaiting(ctx context.Context) ([]string, error) {
	names, err := resumeWaitingScript.Run(ctx, s.rdb, []string{s.keys.CAWaiting(), s.keys.Requests()}, RequestsMaxLen).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("requeueing the names waiting for the CA: %w", err)
	}
	return names, nil
}

// MarkRefusedMany is MarkRefused for several names in one round trip.
func (s *Store) MarkRefusedMany(ctx context.Context, names []string, reason string) error {
	value := refusedMark(reason)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, n := range names {
			p.Set(ctx, s.keys.Issuing(n), value, IssuingTTL)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("marking %d names as refused: %w", len(names), err)
	}
	return nil
}

// ClearIssuingMany is ClearIssuing for several names in one round trip.
func (s *Store) ClearIssuingMany(ctx context.Context, names []string) error {
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, n := range names {
			p.Del(ctx, s.keys.Issuing(n))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("clearing the marks of %d names: %w", len(names), err)
	}
	return nil
}

// oneLine folds whitespace: values are read by nginx and by people with
// redis-cli.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
