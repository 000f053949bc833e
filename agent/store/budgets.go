package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Budget is one rate budget shared by the fleet: at most Limit events of Kind
// for Subject within any Window.
type Budget struct {
	Kind    string // "orders", "certs" or "failed"
	Subject string // account id, registered domain or name
	Limit   int
	Window  time.Duration
	// Hold, when set, makes an event taken with TakeBudget provisional for
	// that long: ConfirmBudget keeps it, ReturnBudget gives it back, and an
	// event neither confirmed nor returned by then (its agent was killed) is
	// given back by the next TakeBudget.
	Hold time.Duration
}

func (b Budget) String() string { return b.Kind + " " + b.Subject }

// takeScript counts the events of the last window in a sorted set (score:
// event time in ms) and adds one unless the budget, less the slots kept for
// higher priorities, is spent. Events held past their deadline (KEYS[2],
// score: the deadline in ms) are dropped first: their order never finished.
// It returns {1} or {0, ms when a slot frees}.
// ARGV: now ms, window ms, limit, reserved slots, member, add (1) or only
// check (0), hold deadline ms (0: the event is not held).
var takeScript = redis.NewScript(`
local now, window, limit, reserved = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local holdUntil = tonumber(ARGV[7])
local expired = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", now)
for _, m in ipairs(expired) do
  redis.call("ZREM", KEYS[1], m)
  redis.call("ZREM", KEYS[2], m)
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - window)
local n = redis.call("ZCARD", KEYS[1])
local usable = limit - reserved
if n < usable then
  if ARGV[6] == "1" then
    redis.call("ZADD", KEYS[1], now, ARGV[5])
    redis.call("PEXPIRE", KEYS[1], window)
    if holdUntil > 0 then
      redis.call("ZADD", KEYS[2], holdUntil, ARGV[5])
      redis.call("PEXPIRE", KEYS[2], math.max(window, holdUntil - now))
    end
  end
  return {1}
end
local free = now + window
local idx = n - usable
local oldest = redis.call("ZRANGE", KEYS[1], idx, idx, "WITHSCORES")
if oldest[2] then
  free = tonumber(oldest[2]) + window
end
-- A held slot may come back sooner: its order runs out of time.
local held = redis.call("ZRANGE", KEYS[2], 0, 0, "WITHSCORES")
if held[2] and tonumber(held[2]) < free then
  free = tonumber(held[2])
end
return {0, free}
`)

// TakeBudget counts one event (member, unique per event) against b at now
// unless fewer than reserved slots of the limit would be left; reserved slots
// are what a lower priority leaves for a higher one. With add false it only
// checks. When the budget is spent it returns false and when a slot frees.
// With b.Hold the event is held until now+Hold (see Budget.Hold).
func (s *Store) TakeBudget(ctx context.Context, b Budget, now time.Time, reserved int, member string, add bool) (bool, time.Time, error) {
	addArg := "0"
	if add {
		addArg = "1"
	}
	var holdUntil int64
	if b.Hold > 0 {
		holdUntil = now.Add(b.Hold).UnixMilli()
	}
	res, err := takeScript.Run(ctx, s.rdb, []string{s.keys.Budget(b.Kind, b.Subject), s.keys.BudgetHeld(b.Kind, b.Subject)},
		now.UnixMilli(), b.Window.Milliseconds(), b.Limit, reserved, member, addArg, holdUntil).Int64Slice()
	if err != nil {
		return false, time.Time{}, fmt.Errorf("counting the %s budget: %w", b, err)
	}
	if res[0] == 1 {
		return true, time.Time{}, nil
	}
	var free time.Time
	if len(res) > 1 {
		free = time.UnixMilli(res[1])
	}
	return false, free, nil
}

// ReturnBudget takes back an event counted with TakeBudget (an order that
// produced no certificate does not count against the certificates budget).
func (s *Store) ReturnBudget(ctx context.Context, b Budget, member string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, s.keys.Budget(b.Kind, b.Subject), member)
		p.ZRem(ctx, s.keys.BudgetHeld(b.Kind, b.Subject), member)
		return nil
	})
	if err != nil {
		return fmt.Errorf("returning to the %s budget: %w", b, err)
	}
	return nil
}

// confirmScript keeps a held event: it is no longer held, and counted from
// its time (ARGV[2]) even if its hold ran out and dropped it meanwhile.
// ARGV: member, event time ms, window ms.
var confirmScript = redis.NewScript(`
redis.call("ZREM", KEYS[2], ARGV[1])
redis.call("ZADD", KEYS[1], "NX", ARGV[2], ARGV[1])
if redis.call("PTTL", KEYS[1]) < tonumber(ARGV[3]) then
  redis.call("PEXPIRE", KEYS[1], ARGV[3])
end
return 1
`)

// ConfirmBudget keeps an event taken at takenAt with TakeBudget under
// b.Hold: its order produced what the budget counts.
func (s *Store) ConfirmBudget(ctx context.Context, b Budget, member string, takenAt time.Time) error {
	err := confirmScript.Run(ctx, s.rdb, []string{s.keys.Budget(b.Kind, b.Subject), s.keys.BudgetHeld(b.Kind, b.Subject)},
		member, takenAt.UnixMilli(), b.Window.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("counting a certificate against the %s budget: %w", b, err)
	}
	return nil
}

// NoteBudgetEvent counts an event that has happened whatever the budget
// says (a failed validation).
func (s *Store) NoteBudgetEvent(ctx context.Context, b Budget, now time.Time, member string) error {
	key := s.keys.Budget(b.Kind, b.Subject)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, key, redis.Z{Score: float64(now.UnixMilli()), Member: member})
		p.PExpire(ctx, key, b.Window)
		return nil
	})
	if err != nil {
		return fmt.Errorf("counting an event against the %s budget: %w", b, err)
	}
	return nil
}

// Park stops issuance in the scope (kind, subject) until until: the CA said
// rateLimited with that Retry-After. A later park only ever extends it.
func (s *Store) Park(ctx context.Context, kind, subject string, until time.Time) error {
	key := s.keys.Park(kind, subject)
	// Kept a minute past until so a slightly fast clock elsewhere still sees it.
	if err := parkScript.Run(ctx, s.rdb, []string{key}, until.UnixMilli(),
		time.Until(until).Milliseconds()+60_000).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("parking %s %s: %w", kind, subject, err)
	}
	return nil
}

var parkScript = redis.NewScript(`
local cur = tonumber(redis.call("GET", KEYS[1]) or "0")
if tonumber(ARGV[1]) > cur then
  local ttl = tonumber(ARGV[2])
  if ttl < 60000 then ttl = 60000 end
  redis.call("SET", KEYS[1], ARGV[1], "PX", ttl)
end
return 1
`)

// Scope names one budget scope.
type Scope struct{ Kind, Subject string }

// ParkedUntil returns the latest park among scopes that is still after now,
// and its scope; a zero time when none is parked.
func (s *Store) ParkedUntil(ctx context.Context, now time.Time, scopes ...Scope) (time.Time, Scope, error) {
	cmds := make([]*redis.StringCmd, len(scopes))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sc := range scopes {
			cmds[i] = p.Get(ctx, s.keys.Park(sc.Kind, sc.Subject))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return time.Time{}, Scope{}, fmt.Errorf("reading parked scopes: %w", err)
	}
	var until time.Time
	var which Scope
	for i, cmd := range cmds {
		ms, err := strconv.ParseInt(cmd.Val(), 10, 64)
		if err != nil {
			continue
		}
		if t := time.UnixMilli(ms); t.After(now) && t.After(until) {
			until, which = t, scopes[i]
		}
	}
	return until, which, nil
}

// BudgetUsed counts the events of b within the window that ends at now.
func (s *Store) BudgetUsed(ctx context.Context, b Budget, now time.Time) (int64, error) {
	n, err := s.rdb.ZCount(ctx, s.keys.Budget(b.Kind, b.Subject),
		"("+strconv.FormatInt(now.Add(-b.Window).UnixMilli(), 10), "+inf").Result()
	if err != nil {
		return 0, fmt.Errorf("reading the %s budget: %w", b, err)
	}
	return n, nil
}
