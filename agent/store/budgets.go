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

// takeScript counts the events of the last window of each budget in a
// sorted set (KEYS[2i-1], score: event time in ms) and adds one to every
// budget unless one of them, less the slots kept for higher priorities, is
// spent: all or none, so an order never holds a slot of one budget while
// another turns it away. Events held past their deadline (KEYS[2i], score:
// the deadline in ms) are dropped first: their order never finished. An
// event counted already (the member is in KEYS[1]) is not counted again. It
// returns {1} or {0, ms when a slot frees, i of the first spent budget}.
// ARGV: now ms, member, add (1) or only check (0), then for each budget:
// window ms, limit, reserved slots, hold deadline ms (0: the event is not
// held).
var takeScript = redis.NewScript(`
local now, member, add = tonumber(ARGV[1]), ARGV[2], ARGV[3] == "1"
-- A run again of one whose answer was lost (go-redis sends a script again
-- when the connection drops) finds its event counted, in every budget.
if add and redis.call("ZSCORE", KEYS[1], member) then return {1} end
local budgets = #KEYS / 2
local function arg(i, n) return tonumber(ARGV[3 + 4 * (i - 1) + n]) end
for i = 1, budgets do
  local key, heldKey = KEYS[2 * i - 1], KEYS[2 * i]
  local window, limit, reserved = arg(i, 1), arg(i, 2), arg(i, 3)
  local expired = redis.call("ZRANGEBYSCORE", heldKey, "-inf", now)
  for _, m in ipairs(expired) do
    redis.call("ZREM", key, m)
    redis.call("ZREM", heldKey, m)
  end
  redis.call("ZREMRANGEBYSCORE", key, "-inf", now - window)
  local n = redis.call("ZCARD", key)
  local usable = limit - reserved
  if n >= usable then
    local free = now + window
    local idx = n - usable
    local oldest = redis.call("ZRANGE", key, idx, idx, "WITHSCORES")
    if oldest[2] then
      free = tonumber(oldest[2]) + window
    end
    -- A held slot may come back sooner: its order runs out of time.
    local held = redis.call("ZRANGE", heldKey, 0, 0, "WITHSCORES")
    if held[2] and tonumber(held[2]) < free then
      free = tonumber(held[2])
    end
    return {0, free, i}
  end
end
if add then
  for i = 1, budgets do
    local key, heldKey = KEYS[2 * i - 1], KEYS[2 * i]
    local window, holdUntil = arg(i, 1), arg(i, 4)
    redis.call("ZADD", key, now, member)
    redis.call("PEXPIRE", key, window)
    if holdUntil > 0 then
      redis.call("ZADD", heldKey, holdUntil, member)
      redis.call("PEXPIRE", heldKey, math.max(window, holdUntil - now))
    end
  end
end
return {1}
`)

// TakeBudget counts one event (member, unique per event) against b at now
// unless fewer than reserved slots of the limit would be left; reserved slots
// are what a lower priority leaves for a higher one. With add false it only
// checks. When the budget is spent it returns false and when a slot frees.
// With b.Hold the event is held until now+Hold (see Budget.Hold).
func (s *Store) TakeBudget(ctx context.Context, b Budget, now time.Time, reserved int, member string, add bool) (bool, time.Time, error) {
	ok, _, free, err := s.takeBudgets(ctx, []Budget{b}, now, []int{reserved}, member, add)
	return ok, free, err
}

// TakeBudgets is TakeBudget for several budgets at once, reserved[i] being
// the slots bs[i] keeps: the event is counted against all of them or, when
// one is spent, against none, and spent is the index of the first spent one.
func (s *Store) TakeBudgets(ctx context.Context, bs []Budget, now time.Time, reserved []int, member string) (ok bool, spent int, free time.Time, err error) {
	return s.takeBudgets(ctx, bs, now, reserved, member, true)
}

func (s *Store) takeBudgets(ctx context.Context, bs []Budget, now time.Time, reserved []int, member string, add bool) (bool, int, time.Time, error) {
	keys, args := s.takeArgs(bs, now, reserved, member, add)
	return takeResult(bs, takeScript.Run(ctx, s.rdb, keys, args...))
}

// CheckBudget queues TakeBudget of b with add false and no slots reserved:
// whether an event could be counted now.
func (b *Batch) CheckBudget(ctx context.Context, bg Budget, now time.Time) func() (bool, time.Time, error) {
	bs, reserved := []Budget{bg}, []int{0}
	keys, args := b.s.takeArgs(bs, now, reserved, "", false)
	queued := takeScript.EvalSha(ctx, b.p, keys, args...)
	return func() (bool, time.Time, error) {
		ok, _, free, err := takeResult(bs, runQueued(ctx, b.s, takeScript, queued, keys, args...))
		return ok, free, err
	}
}

// takeArgs are the keys and arguments of takeScript.
func (s *Store) takeArgs(bs []Budget, now time.Time, reserved []int, member string, add bool) ([]string, []any) {
	addArg := "0"
	if add {
		addArg = "1"
	}
	keys := make([]string, 0, 2*len(bs))
	args := []any{now.UnixMilli(), member, addArg}
	for i, b := range bs {
		var holdUntil int64
		if b.Hold > 0 {
			holdUntil = now.Add(b.Hold).UnixMilli()
		}
		keys = append(keys, s.keys.Budget(b.Kind, b.Subject), s.keys.BudgetHeld(b.Kind, b.Subject))
		args = append(args, b.Window.Milliseconds(), b.Limit, reserved[i], holdUntil)
	}
	return keys, args
}

// takeResult reads takeScript's answer: counted, or the index of the first
// spent budget and when a slot of it frees.
func takeResult(bs []Budget, cmd *redis.Cmd) (bool, int, time.Time, error) {
	res, err := cmd.Int64Slice()
	if err != nil {
		return false, 0, time.Time{}, fmt.Errorf("counting the %s budget: %w", budgetNames(bs), err)
	}
	if res[0] == 1 {
		return true, 0, time.Time{}, nil
	}
	var free time.Time
	if len(res) > 1 {
		free = time.UnixMilli(res[1])
	}
	spent := 0
	if len(res) > 2 {
		spent = int(res[2]) - 1
	}
	return false, spent, free, nil
}

// budgetNames names bs for an error.
func budgetNames(bs []Budget) string {
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.String()
	}
	return strings.Join(names, ", ")
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
	b := s.NewBatch()
	parked := b.ParkedUntil(ctx, now, scopes...)
	b.Exec(ctx)
	return parked()
}

// ParkedUntil queues Store.ParkedUntil.
func (b *Batch) ParkedUntil(ctx context.Context, now time.Time, scopes ...Scope) func() (time.Time, Scope, error) {
	cmds := make([]*redis.StringCmd, len(scopes))
	for i, sc := range scopes {
		cmds[i] = b.p.Get(ctx, b.s.keys.Park(sc.Kind, sc.Subject))
	}
	return func() (time.Time, Scope, error) {
		var until time.Time
		var which Scope
		for i, cmd := range cmds {
			if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
				return time.Time{}, Scope{}, fmt.Errorf("reading parked scopes: %w", err)
			}
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
