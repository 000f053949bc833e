package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The published rules (docs/redis-schema.md, `rules`): what nginx judges
// names by without asking an agent. The fields hold space-separated rules in
// the allowlist's grammar (exact names, "*.parent", and "*" for every name).
const (
	rulesVersion = "version" // bumped by every publication
	rulesStatic  = "static"  // the agents' --allow and --allow-file rules; present once an agent published
	rulesAllow   = "allow"   // a copy of the allowlist (the set `allow`)
	rulesAsk     = "ask"     // the names the ask URL decides for: "*", or empty without one
)

// allowScript changes the allowlist and republishes the rules in one step,
// so the record nginx judges by never lags the set the agents decide by.
// nginx reads the record again only for a version above its own: a record
// written anew (a new fleet, or a Redis that lost it) starts at the Redis
// time in microseconds, above any version a lost record can have had (it
// would take more than one publication a microsecond to catch up). An
// integer below 2^53: exact in nginx's Lua numbers too.
// KEYS: allow, allow-generation, rules, changes. ARGV: op ("add", "rm" or
// "agent"), changes MAXLEN, static rules, ask rules, then the rules to add
// or remove. "agent" writes the agent's static and ask fields. A change of
// the allowlist publishes only when an agent has published already: until
// then nginx behaves as if there were no rules. It returns {rules added or
// removed, the new version (0: none published), the static rules before}.
var allowScript = redis.NewScript(`
local op = ARGV[1]
local n = 0
if op == "add" or op == "rm" then
  for i = 5, #ARGV do
    if op == "add" then
      n = n + redis.call("SADD", KEYS[1], ARGV[i])
    else
      n = n + redis.call("SREM", KEYS[1], ARGV[i])
    end
  end
  redis.call("INCR", KEYS[2])
end
local before = redis.call("HGET", KEYS[3], "static")
if op == "agent" then
  redis.call("HSET", KEYS[3], "static", ARGV[3], "ask", ARGV[4])
elseif not before then
  return {n, 0, ""}
end
local members = redis.call("SMEMBERS", KEYS[1])
table.sort(members)
redis.call("HSET", KEYS[3], "allow", table.concat(members, " "))
local v
if redis.call("HEXISTS", KEYS[3], "version") == 1 then
  v = redis.call("HINCRBY", KEYS[3], "version", 1)
else
  local t = redis.call("TIME")
  v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call("HSET", KEYS[3], "version", string.format("%.0f", v))
end
redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[2], "*", "op", "rules", "version", v)
return {n, v, before or ""}
`)

func (s *Store) runAllowScript(ctx context.Context, op, static, ask string, rules []string) (n, version int64, before string, err error) {
	args := []any{op, ChangesMaxLen, static, ask}
	for _, r := range rules {
		args = append(args, r)
	}
	keys := []string{s.keys.Allow(), s.keys.AllowGeneration(), s.keys.Rules(), s.keys.Changes()}
	res, err := allowScript.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return 0, 0, "", err
	}
	if len(res) != 3 {
		return 0, 0, "", fmt.Errorf("unexpected reply %v", res)
	}
	n, _ = res[0].(int64)
	version, _ = res[1].(int64)
	before, _ = res[2].(string)
	return n, version, before, nil
}

// PublishedRules is what the agents publish for nginx to judge names by.
type PublishedRules struct {
	// Static are the agent's own rules (--allow, --allow-file), "*" included.
	Static []string
	// Ask are the names the ask URL decides for: ["*"] when one is
	// configured, none without.
	Ask []string
}

// PublishRules writes the agent's rules, with a fresh copy of the
// allowlist, as a new version of the published rules, announced in the
// stream of changes. It returns the new version and the static rules
// published before (empty when none were), so that an agent can tell when
// another agent of the fleet runs with different rules.
func (s *Store) PublishRules(ctx context.Context, r PublishedRules) (int64, []string, error) {
	_, version, before, err := s.runAllowScript(ctx, "agent", strings.Join(r.Static, " "), strings.Join(r.Ask, " "), nil)
	if err != nil {
		return 0, nil, fmt.Errorf("publishing the allow rules: %w", err)
	}
	return version, strings.Fields(before), nil
}

// RulesRecord is the published rules as stored.
type RulesRecord struct {
	Version            int64
	Static, Allow, Ask []string
	Published          bool // an agent has published (Static may still be empty)
}

// Rules reads the published rules.
func (s *Store) Rules(ctx context.Context) (RulesRecord, error) {
	vals, err := s.rdb.HMGet(ctx, s.keys.Rules(), rulesVersion, rulesStatic, rulesAllow, rulesAsk).Result()
	if err != nil {
		return RulesRecord{}, fmt.Errorf("reading the published rules: %w", err)
	}
	str := func(v any) string { s, _ := v.(string); return s }
	var rec RulesRecord
	_, _ = fmt.Sscan(str(vals[0]), &rec.Version)
	rec.Published = vals[1] != nil
	rec.Static, rec.Allow, rec.Ask = strings.Fields(str(vals[1])), strings.Fields(str(vals[2])), strings.Fields(str(vals[3]))
	return rec, nil
}

// Beat records that an agent is alive for ttl; any agent's beat counts. In
// the same round trip it reads whether the rules are published, so that an
// agent publishes them again when Redis lost them (a restart without
// persistence).
func (s *Store) Beat(ctx context.Context, agent string, ttl time.Duration) (published bool, err error) {
	var exists *redis.BoolCmd
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.keys.Alive(), agent, ttl)
		exists = p.HExists(ctx, s.keys.Rules(), rulesStatic)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("recording that %s is alive: %w", agent, err)
	}
	return exists.Val(), nil
}

// AliveFor returns how long the last beat of any agent still counts; 0 when
// none does.
func (s *Store) AliveFor(ctx context.Context) (time.Duration, error) {
	d, err := s.rdb.PTTL(ctx, s.keys.Alive()).Result()
	if err != nil {
		return 0, fmt.Errorf("reading the agents' heartbeat: %w", err)
	}
	return max(d, 0), nil
}
