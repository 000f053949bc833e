-- The first handshake's wait: a handshake (or a port-80 request) for a name
-- without a certificate may be held while the agent issues it, and then gets
-- the real certificate instead of the fallback.
--
-- The agent says what it does with the name in issuing:<name>
-- (docs/redis-schema.md): "issuing" while its order runs, "refused <reason>"
-- when it will not issue the name now; the key is deleted once the
-- certificate is stored. A handshake is held
--   - while the mark says "issuing", up to first_handshake_wait from its
--     start;
--   - not at all when it says "refused", or when the name was refused (for
--     request_window, certagent.rules) or found unmarked (for negative_ttl)
--     a moment ago, or while no agent is alive (certagent.rules);
--   - up to first_handshake_grace when there is no mark yet (the agent has
--     not taken the name: it is down, or busy with others).
--
-- Bounded: at most first_handshake_max_waiting handshakes are held at once
-- per worker, whatever their names; past that the fallback is served at
-- once. Handshakes for one name in a worker share one wait: the first polls
-- Redis (the mark and the certificate records in one round trip), the others
-- wait on a semaphore for its result. The first poll comes after about as
-- long as the agent took to answer the worker's last waits (from 2 to
-- 25 ms), then the pause doubles up to 200 ms: a refusal, which the agent
-- writes a millisecond or two after the name reaches it, ends the wait as
-- soon as it is there. Everything yields (ngx.sleep, ngx.semaphore): the worker
-- goes on serving other connections meanwhile.
--
-- A handshake whose client goes away while it is held can be ended by nginx
-- without the rest of its Lua running, so nothing here relies on code after
-- a yield for its bookkeeping: a held handshake counts against the bound
-- until it returns or its deadline (plus the slack of one Redis round trip)
-- has passed, and a shared wait whose poller vanished is replaced.
local ngx = ngx
local semaphore = require("ngx.semaphore")
local stats = require("certagent.stats")
local rules = require("certagent.rules")

local log = ngx.log
local ERR = ngx.ERR
local shared = ngx.shared
local sleep = ngx.sleep
local now = ngx.now
local update_time = ngx.update_time
local pcall = pcall
local pairs = pairs
local type = type
local tostring = tostring
local sub = string.sub
local min = math.min
local max = math.max
local huge = math.huge

local _M = { _VERSION = "0.1.0" }

local FIRST_MIN = 0.002      -- s before the first poll of a wait, at least
local FIRST_MAX = 0.025      -- s before the first poll, at most
local MAX_INTERVAL = 0.05    -- s between later polls: a certificate is served within 50 ms of its write
local SLACK = 1              -- s past a wait's deadline before it is taken for abandoned

-- The marks, as the lookups report them: "issuing", "refused", "none" (no
-- key), "error" (Redis refused the GET: the ACL lacks it), or nil when the
-- lookup did not read the mark (the caches answered).
local ISSUING, REFUSED, NONE, ERROR = "issuing", "refused", "none", "error"
_M.ISSUING, _M.REFUSED, _M.NONE, _M.ERROR = ISSUING, REFUSED, NONE, ERROR

local cfg, poll
local overrun -- s a poll may take: connect and read timeouts

-- This worker's held handshakes: token -> the time from which it no longer
-- counts, how many there are, and the soonest of those times.
local active, count, soonest, seq = {}, 0, huge, 0
-- This worker's shared waits: name -> { sema, waiters, ends, entry, result }.
local waits = {}
local worker_id

local mark_error_logged = false

-- How long the agent took to answer (its mark seen, or the certificate) in
-- this worker's last waits, smoothed: when the first poll is due.
local answer_time = 0.005

local function answered(took)
    answer_time = answer_time + (took - answer_time) / 4
end

-- init is called by certagent.ssl with the configuration and the function
-- that polls Redis for a name: poll(name) returns a usable certificate entry
-- or nil, the mark, and an error (logged and counted by poll) when the round
-- trip failed or a record is unusable.
function _M.init(config, poll_fn)
    cfg = config
    poll = poll_fn
    overrun = (cfg.connect_timeout + cfg.read_timeout) / 1000
    return true
end

-- enabled reports whether handshakes may be held at all.
function _M.enabled()
    return cfg.first_handshake_wait > 0
end

-- parse_mark turns the reply to GET issuing:<name> into a mark.
function _M.parse_mark(reply, key)
    if type(reply) == "string" then
        if reply == ISSUING then
            return ISSUING
        end
        if sub(reply, 1, 7) == REFUSED then
            return REFUSED
        end
        return NONE
    end
    if type(reply) == "table" and reply[1] == false then
        if not mark_error_logged then
            mark_error_logged = true
            log(ERR, "certagent: reading ", key, ": ", tostring(reply[2]),
                "; no handshake is held for its certificate (the nginx Redis user needs GET on the issuing:* keys,",
                " see docs/redis-acl.md)")
        end
        return ERROR
    end
    return NONE
end

local function clock()
    update_time()
    return now()
end

local function memory_dict()
    return shared[cfg.requests_dict]
end

-- remember notes that name is not worth holding a handshake for, for every
-- worker: refused (certagent.rules), or no mark within the grace (for
-- negative_ttl).
local function remember(name, what)
    if what == REFUSED then
        return rules.refused(name)
    end
    local dict = memory_dict()
    if dict then
        dict:set("w:" .. name, what, cfg.negative_ttl)
    end
end

local function publish()
    if not worker_id then
        worker_id = ngx.worker.id() or 0
    end
    stats.set("waiting", worker_id, count)
    stats.raise("waiting_highest", worker_id, count)
end

-- prune forgets held handshakes past their time (their Lua never returned).
local function prune(t)
    if t < soonest then
        return
    end
    soonest = huge
    for token, until_t in pairs(active) do
        if until_t <= t then
            active[token] = nil
            count = count - 1
        elseif until_t < soonest then
            soonest = until_t
        end
    end
end

-- run polls Redis for name until its certificate is there or the wait is
-- over; mark is what the handshake's own lookup read (nil: not read). It
-- returns the entry or nil, and how the wait ended.
local function run(name, mark, started)
    local deadline = started + cfg.first_handshake_wait
    local grace_end = min(started + cfg.first_handshake_grace, deadline)
    local seen = mark == ISSUING
    local heard = seen
    local interval = min(max(answer_time, FIRST_MIN), FIRST_MAX)
    local due = mark == nil -- the mark was not read: read it at once
    while true do
        if not due then
            local t = clock()
            local limit = seen and deadline or grace_end
            if t >= limit then
                if not seen then
                    remember(name, NONE)
                    return nil, "grace"
                end
                return nil, "deadline"
            end
            sleep(max(0.001, min(interval, limit - t)))
            interval = min(interval * 2, MAX_INTERVAL)
        end
        due = false
        stats.incr("wait_polls")
        local entry, m, err = poll(name)
        if err then
            return nil, "error"
        end
        if not heard and (entry or m == REFUSED or m == ISSUING) then
            heard = true
            answered(clock() - started)
        end
        if entry then
            return entry, "certificate"
        end
        if m == REFUSED then
            remember(name, REFUSED)
            return nil, "refused"
        elseif m == ISSUING then
            -- Once seen, a missing mark means the certificate was just
            -- stored (the next poll finds it) or the agent died (the
            -- deadline ends the wait).
            seen = true
        elseif m == ERROR then
            return nil, "error"
        end
    end
end

-- share makes this handshake the poller of name's wait in this worker, or
-- lets it wait for the poller's result.
local function share(name, mark, t)
    local w = waits[name]
    if w and w.ends > t then
        w.waiters = w.waiters + 1
        local ok = w.sema:wait(max(0.001, w.ends - t))
        if ok then
            return w.entry, w.result
        end
        w.waiters = w.waiters - 1
        return nil, "deadline"
    end
    w = { sema = semaphore.new(0), waiters = 0, ends = t + cfg.first_handshake_wait + overrun + SLACK }
    waits[name] = w
    stats.incr("wait_pollers")
    local ok, entry, result = pcall(run, name, mark, t)
    if not ok then
        log(ERR, "certagent: waiting for the certificate of ", name, ": ", tostring(entry))
        entry, result = nil, "error"
    end
    if waits[name] == w then
        waits[name] = nil
    end
    w.entry, w.result = entry, result
    if w.waiters > 0 then
        w.sema:post(w.waiters)
    end
    return entry, result
end

-- await holds the handshake (or request) for name when that may get it its
-- certificate, and returns the certificate entry once stored, or nil for the
-- fallback. mark is what the lookup read of issuing:<name> (nil: not read);
-- recorded says whether the name is in the requests stream (or was put
-- there within request_window): an unrecorded, unmarked name has no agent
-- working on it.
function _M.await(name, mark, recorded)
    if cfg.first_handshake_wait <= 0 or mark == ERROR then
        return nil
    end
    if mark == REFUSED then
        remember(name, REFUSED)
        return nil
    end
    if mark ~= ISSUING then
        if not recorded then
            return nil
        end
        local dict = memory_dict()
        if dict and dict:get("w:" .. name) then
            return nil
        end
    end

    if not rules.alive() then
        stats.incr("wait_no_agent")
        return nil
    end
    local t = clock()
    prune(t)
    if count >= cfg.first_handshake_max_waiting then
        stats.incr("wait_turned_away")
        return nil
    end
    seq = seq + 1
    local token = seq
    local until_t = t + cfg.first_handshake_wait + overrun + SLACK
    active[token] = until_t
    count = count + 1
    if until_t < soonest then
        soonest = until_t
    end
    publish()
    stats.incr("waits")

    local ok, entry, result = pcall(share, name, mark, t)
    if active[token] then
        active[token] = nil
        count = count - 1
    end
    publish()
    if not ok then
        log(ERR, "certagent: waiting for the certificate of ", name, ": ", tostring(entry))
        entry, result = nil, "error"
    end
    stats.incr("wait_" .. result)
    return entry
end

return _M
