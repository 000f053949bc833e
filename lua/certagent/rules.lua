-- Judging a name without a certificate in the worker, without Redis: the
-- fleet's allow rules as the agents publish them (rules in
-- docs/redis-schema.md), the refusals this node has seen, and whether any
-- agent is alive (alive).
--
--   - A name that no published rule can allow (nor the ask URL, when the
--     agents have one) is never recorded nor held: no agent would issue it.
--   - A name an agent refused is not recorded nor held again for
--     request_window, unless the rules change meanwhile.
--   - While no agent is alive, no handshake is held: none would be answered.
--
-- Each worker keeps the rules in memory: it reads them once at its start
-- and again when the changes stream announces a new version (or was
-- trimmed). Until an agent has published them (a new fleet, or agents older
-- than the record), every name is judged worth asking, as before. The
-- heartbeat is read with the rules, and else only for a handshake that may
-- be held, at most once a second per worker, and not at all while the last
-- one read still counts.
local ngx = ngx
local redis = require("certagent.redis")

local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local null = ngx.null
local shared = ngx.shared
local now = ngx.now
local timer_at = ngx.timer.at
local tonumber = tonumber
local tostring = tostring
local type = type
local find = string.find
local sub = string.sub
local gmatch = string.gmatch
local min = math.min

local _M = { _VERSION = "0.1.0" }

-- What judge returns: the reason a name is not worth asking an agent about.
local NO_RULE, REFUSED = "no_rule", "refused"
_M.NO_RULE, _M.REFUSED = NO_RULE, REFUSED

local ALIVE_READ_EVERY = 1 -- s between two reads of the heartbeat by a worker
local RETRY_FIRST, RETRY_MOST = 1, 30 -- s between tries to read the rules after a failure

local cfg, keys

-- The rules this worker judges by (compiled), or nil: none published, or
-- not read yet.
local current
local loading, again, retry_pause = false, false, 0

-- Until when (ngx.now()) the last heartbeat read counts; nil: not read.
local alive_until
local alive_read_at = -ALIVE_READ_EVERY
local failing = false

function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    return true
end

-- compile turns the published fields into sets: exact names, the parents of
-- the "*.parent" rules, and whether "*" (every name) is among them. The ask
-- field is in the same grammar: the names the ask URL can decide for may be
-- allowed as well as those a rule names.
local function compile(version, fields)
    local r = { version = version, exact = {}, parents = {}, all = false }
    for i = 1, #fields do
        local field = fields[i]
        if type(field) == "string" then
            for rule in gmatch(field, "%S+") do
                if rule == "*" then
                    r.all = true
                elseif sub(rule, 1, 2) == "*." then
                    r.parents[sub(rule, 3)] = true
                else
                    r.exact[rule] = true
                end
            end
        end
    end
    return r
end

-- may_allow reports whether a rule of r can allow the normalized name: one
-- table lookup per label.
local function may_allow(r, name)
    if r.all or r.exact[name] then
        return true
    end
    local parents = r.parents
    local dot = find(name, ".", 1, true)
    while dot do
        if parents[sub(name, dot + 1)] then
            return true
        end
        dot = find(name, ".", dot + 1, true)
    end
    return false
end

local function heard(pttl)
    alive_read_at = now()
    pttl = tonumber(pttl)
    if pttl then
        alive_until = alive_read_at + (pttl > 0 and pttl / 1000 or 0)
    end
end

-- read reads the rules and the heartbeat in one round trip and installs them.
local function read()
    local red, err = redis.connect(cfg)
    if not red then
        return nil, err
    end
    red:init_pipeline(2)
    red:hmget(keys:rules(), "version", "static", "allow", "ask")
    red:pttl(keys:alive())
    local replies
    replies, err = red:commit_pipeline()
    if not replies then
        redis.drop(cfg, red, replies, err)
        return nil, err
    end
    local fields = replies[1]
    if type(fields) ~= "table" or fields[1] == false then
        redis.release(cfg, red)
        return nil, "reading " .. keys:rules() .. ": " .. tostring(type(fields) == "table" and fields[2] or fields)
    end
    redis.release(cfg, red)
    if fields[2] == null or fields[2] == nil then
        current = nil -- no agent has published: judge nothing
    else
        current = compile(tonumber(fields[1]) or 0, { fields[2], fields[3], fields[4] })
    end
    heard(replies[2])
    return true
end

local load

local function schedule(delay)
    local ok, err = timer_at(delay, load)
    if not ok then
        loading = false
        log(ERR, "certagent: cannot schedule reading the allow rules: ", err)
    end
end

load = function(premature)
    if premature then
        loading = false
        return
    end
    again = false
    local ok, err = read()
    if ok then
        retry_pause = 0
        if failing then
            failing = false
            log(WARN, "certagent: reading the published allow rules again")
        end
        if again then
            return schedule(0) -- announced while this read ran
        end
        loading = false
        return
    end
    if not failing and not redis.down() then
        failing = true
        log(ERR, "certagent: reading the published allow rules ", keys:rules(), ": ", tostring(err),
            "; names are judged by the rules read before, if any")
    end
    retry_pause = retry_pause == 0 and RETRY_FIRST or min(retry_pause * 2, RETRY_MOST)
    schedule(retry_pause)
end

-- announce is called by certagent.changes for a new version of the rules
-- (nil: the stream may have lost announcements): the worker reads them
-- again, out of band, unless it judges by that version already.
function _M.announce(version)
    version = tonumber(version)
    if version and current and current.version >= version then
        return
    end
    if loading then
        again = true
        return
    end
    loading = true
    schedule(0)
end

-- init_worker reads the rules at the worker's start.
function _M.init_worker()
    _M.announce(nil)
    return true
end

local function memory()
    return shared[cfg.requests_dict]
end

local function version()
    return current and current.version or 0
end

-- outside reports whether no published rule can allow name (nothing is
-- published: false). It asks nothing of any dict.
function _M.outside(name)
    local r = current
    return r ~= nil and not may_allow(r, name)
end

-- judge returns why name is not worth recording or holding (NO_RULE,
-- REFUSED), or nil when an agent may issue it.
function _M.judge(name)
    if _M.outside(name) then
        return NO_RULE
    end
    local dict = memory()
    if dict and dict:get("r:" .. name) == version() then
        return REFUSED
    end
    return nil
end

-- refused remembers, for every worker of the node, that an agent refused
-- name: for request_window, or until the rules change.
function _M.refused(name)
    local dict = memory()
    if dict then
        dict:set("r:" .. name, version(), cfg.request_window)
    end
end

-- read_alive reads the heartbeat. After a failed read nothing is known:
-- handshakes are held as before there was a heartbeat, until a read succeeds.
local function read_alive()
    local red, err = redis.connect(cfg)
    if not red then
        alive_until = nil
        return nil, err
    end
    local res
    res, err = red:pttl(keys:alive())
    if not res then
        redis.drop(cfg, red, res, err)
        alive_until = nil
        return nil, err
    end
    redis.release(cfg, red)
    heard(res)
    return true
end

-- alive reports whether a handshake may be held: an agent's heartbeat
-- counts, or nothing says otherwise (no rules published, the heartbeat not
-- read, or its last read failed). Once the last heartbeat read has run out, the handshake that asks
-- reads it again, at most one a second per worker (the slot is taken before
-- the read, so a handshake ended during it cannot stop the next ones); the
-- others meanwhile get the last answer.
function _M.alive()
    if not current then
        return true
    end
    local t = now()
    if alive_until and t < alive_until then
        return true
    end
    if t - alive_read_at >= ALIVE_READ_EVERY then
        alive_read_at = t
        read_alive()
        t = now()
    end
    return alive_until == nil or t < alive_until
end

-- published returns the version this worker judges by, or nil.
function _M.version()
    return current and current.version
end

return _M
