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
	rulesStatic  = "static"  // the union of the live agents' --allow and --allow-file rules; present once an agent published
	rulesAllow   = "allow"   // a copy of the allowlist (the set `allow`)
	rulesAsk     = "ask"     // the names the ask URL decides for: "*" when a live agent has one, else empty

	// Each agent's own entry, under its heartbeat name: its rules, its
	// ask field, and when it last beat (Redis TIME, ms).
	rulesAgentStatic = "static:"
	rulesAgentAsk    = "ask:"
	rulesAgentSeen   = "seen:"
)

// allowScript changes the allowlist or an agent's entry and republishes the
// rules in one step, so the record nginx judges by never lags the set the
// agents decide by, nor the agents alive.
//
// Every agent keeps its own entry (static:<agent>, ask:<agent>,
// seen:<agent>); `static` and `ask` are the union of the entries, so that
// agents running with different rules (a rolling deploy, or a fleet split
// by --allow) never make nginx refuse a name one of them would issue. A
// beat refreshes the agent's seen:<agent> and forgets the entries of the
// agents not seen for longer than the bound it is given, so the union
// shrinks once an agent with extra rules is gone.
//
// nginx reads the record again only for a version above its own: a record
// written anew (a new fleet, or a Redis that lost it) starts at the Redis
// time in microseconds, above any version a lost record can have had (it
// would take more than one publication a microsecond to catch up). An
// integer below 2^53: exact in nginx's Lua numbers too.
//
// KEYS: allow, allow-generation, rules, changes, alive. ARGV: op ("add",
// "rm", "agent" or "beat"), changes MAXLEN, agent, its static rules, its ask
// rules, the forget bound (ms), the heartbeat TTL (ms), then the rules to
// add or remove. "agent" writes the agent's entry and publishes; "beat"
// sets alive, forgets the entries not seen within the bound, refreshes the
// agent's, and publishes only when the union changed. A change of the
// allowlist publishes only when an agent has published already: until then
// nginx behaves as if there were no rules. It returns {rules added or
// removed, the new version (0: none published), 1 when the agent's own
// entry is in the record}.
var allowScript = redis.NewScript(`
local op, agent = ARGV[1], ARGV[3]
local n = 0
if op == "add" or op == "rm" then
  for i = 8, #ARGV do
    if op == "add" then
      n = n + redis.call("SADD", KEYS[1], ARGV[i])
    else
      n = n + redis.call("SREM", KEYS[1], ARGV[i])
    end
  end
  redis.call("INCR", KEYS[2])
end

local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen_at = string.format("%.0f", now_ms) -- an integer, never in exponent notation

-- union of the fields named prefix..<agent>: deduplicated, sorted.
local function union(h, prefix)
  local seen, list = {}, {}
  for i = 1, #h, 2 do
    if string.sub(h[i], 1, #prefix) == prefix then
      for r in string.gmatch(h[i + 1], "%S+") do
        if not seen[r] then
          seen[r] = true
          list[#list + 1] = r
        end
      end
    end
  end
  table.sort(list)
  return table.concat(list, " ")
end

local function publish()
  local members = redis.call("SMEMBERS", KEYS[1])
  table.sort(members)
  redis.call("HSET", KEYS[3], "allow", table.concat(members, " "))
  local v
  if redis.call("HEXISTS", KEYS[3], "version") == 1 then
    v = redis.call("HINCRBY", KEYS[3], "version", 1)
  else
    v = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call("HSET", KEYS[3], "version", string.format("%.0f", v))
  end
  redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[2], "*", "op", "rules", "version", v)
  return v
end

-- unions recomputes static and ask from the entries; true when they changed.
local function unions()
  local h = redis.call("HGETALL", KEYS[3])
  local static, ask = union(h, "static:"), union(h, "ask:")
  local old = redis.call("HMGET", KEYS[3], "static", "ask")
  redis.call("HSET", KEYS[3], "static", static, "ask", ask)
  return old[1] ~= static or old[2] ~= ask
end

if op == "add" or op == "rm" then
  if redis.call("HEXISTS", KEYS[3], "static") == 0 then
    return {n, 0, 0}
  end
  return {n, publish(), 0}
end

if op == "agent" then
  redis.call("HSET", KEYS[3], "static:" .. agent, ARGV[4], "ask:" .. agent, ARGV[5], "seen:" .. agent, seen_at)
  unions()
  return {0, publish(), 1}
end

-- op == "beat"
redis.call("SET", KEYS[5], agent, "PX", ARGV[7])
local forget = tonumber(ARGV[6])
local h = redis.call("HGETALL", KEYS[3])
local forgot = false
for i = 1, #h, 2 do
  if string.sub(h[i], 1, 5) == "seen:" and now_ms - (tonumber(h[i + 1]) or 0) > forget then
    local id = string.sub(h[i], 6)
    redis.call("HDEL", KEYS[3], h[i], "static:" .. id, "ask:" .. id)
    forgot = true
  end
end
local mine = redis.call("HEXISTS", KEYS[3], "static:" .. agent)
if mine == 1 then
  redis.call("HSET", KEYS[3], "seen:" .. agent, seen_at)
end
if forgot and unions() then
  return {0, publish(), mine}
end
return {0, 0, mine}
`)

// allowCall is one run of allowScript.
type allowCall struct {
	op, agent, static, ask string
	forget, ttl            time.Duration
	rules                  []string
}

func (s *Store) runAllowScript(ctx context.Context, c allowCall) (n, version int64, mine bool, err error) {
	args := []any{c.op, ChangesMaxLen, c.agent, c.static, c.ask, c.forget.Milliseconds(), c.ttl.Milliseconds()}
	for _, r := range c.rules {
		args = append(args, r)
	}
	keys := []string{s.keys.Allow(), s.keys.AllowGeneration(), s.keys.Rules(), s.keys.Changes(), s.keys.Alive()}
	res, err := allowScript.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return 0, 0, false, err
	}
	if len(res) != 3 {
		return 0, 0, false, fmt.Errorf("unexpected reply %v", res)
	}
	n, _ = res[0].(int64)
	version, _ = res[1].(int64)
	own, _ := res[2].(int64)
	return n, version, own == 1, nil
}

// PublishedRules is what an agent publishes for nginx to judge names by.
type PublishedRules struct {
	// Agent is the agent's name, as in its heartbeat (Beat).
	Agent string
	// Static are the agent's own rules (--allow, --allow-file), "*" included.
	Static []string
	// Ask are the names the ask URL decides for: ["*"] when one is
	// configured, none without.
	Ask []string
}

// PublishRules writes the agent's entry and publishes, with a fresh copy of
// the allowlist, the union of the live agents' entries as a new version of
// the published rules, announced in the stream of changes. It returns the
// new version.
func (s *Store) PublishRules(ctx context.Context, r PublishedRules) (int64, error) {
	_, version, _, err := s.runAllowScript(ctx, allowCall{op: "agent", agent: r.Agent,
		static: strings.Join(r.Static, " "), ask: strings.Join(r.Ask, " ")})
	if err != nil {
		return 0, fmt.Errorf("publishing the allow rules of %s: %w", r.Agent, err)
	}
	return version, nil
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
// the same script it refreshes the agent's entry in the published rules and
// forgets the entries of the agents not seen for longer than forget
// (publishing the smaller union, if it is smaller), and reports whether the
// agent's own entry is there, so that an agent publishes again when Redis
// lost it (a restart without persistence) or forgot it (an agent away for
// longer than forget).
func (s *Store) Beat(ctx context.Context, agent string, ttl, forget time.Duration) (published bool, err error) {
	_, _, mine, err := s.runAllowScript(ctx, allowCall{op: "beat", agent: agent, ttl: ttl, forget: forget})
	if err != nil {
		return false, fmt.Errorf("recording that %s is alive: %w", agent, err)
	}
	return mine, nil
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
