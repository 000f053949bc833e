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
-- 25 ms), then the pause doubles up to 50 ms: a refusal, which the agent
-- writes a millisecond or two after the name reaches it, ends the wait as
-- soon as it is there.
--
-- The certificate itself is not waited for by polling: while a worker holds
-- handshakes, one light thread of it follows the changes stream with a
-- blocking read (XREAD BLOCK, the command certagent.changes reads it with),
-- and the agent's entry for a stored certificate wakes the poller of that
-- name (or, for a wildcard, of the names under it) at once. Once the agent's
-- "issuing" mark is seen, a poller followed so polls only every 250 ms, for
-- a refusal (a failed order) or the case the stream cannot tell: a lost
-- connection, an entry trimmed before it was read. When the stream cannot be
-- followed, the polls go on every 50 ms as before. Everything yields
-- (ngx.semaphore, the blocking read): the worker goes on serving other
-- connections meanwhile.
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
local redis = require("certagent.redis")
local names = require("certagent.names")

local log = ngx.log
local ERR = ngx.ERR
local shared = ngx.shared
local now = ngx.now
local update_time = ngx.update_time
local timer_at = ngx.timer.at
local exiting = ngx.worker.exiting
local pcall = pcall
local pairs = pairs
local next = next
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
local FOLLOWED_INTERVAL = 0.25 -- s between polls once issuing, while the changes stream wakes the poller
local SLACK = 1              -- s past a wait's deadline before it is taken for abandoned
local LISTEN_BLOCK = 1000    -- ms one blocking read of the changes stream waits at most
local LISTEN_BATCH = 100     -- changes entries read at once
local LISTEN_RETRY = 1       -- s after a failed read before the stream is followed again

-- The marks, as the lookups report them: "issuing", "refused", "none" (no
-- key), "error" (Redis refused the GET: the ACL lacks it), or nil when the
-- lookup did not read the mark (the caches answered).
local ISSUING, REFUSED, NONE, ERROR = "issuing", "refused", "none", "error"
_M.ISSUING, _M.REFUSED, _M.NONE, _M.ERROR = ISSUING, REFUSED, NONE, ERROR

local cfg, poll, keys
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
-- trip failed or a record is unusable; and the key builder of
-- certagent.init, for the changes stream the follower reads.
function _M.init(config, poll_fn, key_builder)
    cfg = config
    poll = poll_fn
    keys = key_builder
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

-- The follower of the changes stream: whether its light thread runs,
-- whether it has the stream in hand (the polls of an issuing name may then
-- be spaced), and when it may start again after a failure.
local following, followed, follow_after = false, false, 0
local follow_error_logged = false

-- wake has the poller of wait w poll at once.
local function wake(w)
    if w and w.nudge:count() <= 0 then
        w.nudge:post(1)
    end
end

-- woken wakes the waits a stored or deleted record concerns: the name's
-- own, or for a wildcard record those of the names under it.
local function woken(name)
    if sub(name, 1, 2) ~= "*." then
        return wake(waits[name])
    end
    local parent = sub(name, 3)
    for held, w in pairs(waits) do
        if names.parent(held) == parent then
            wake(w)
        end
    end
end

-- woken_by wakes the waits of the names in an XREAD reply and returns the
-- ID to read after.
local function woken_by(reply, last)
    if type(reply) ~= "table" or type(reply[1]) ~= "table" then
        return last -- null: the read's time ran out
    end
    local entries = reply[1][2]
    for i = 1, #entries do
        local fields = entries[i][2]
        for j = 1, #fields - 1, 2 do
            if fields[j] == "name" then
                woken(fields[j + 1])
            end
        end
        last = entries[i][1]
    end
    return last
end

-- listen follows the changes stream with blocking reads while this worker
-- holds a wait. It returns true once there is none left, or nil, the error
-- and what the read returned (nil: no answer; false: an error reply).
local function listen()
    local red, err = redis.connect(cfg)
    if not red then
        return nil, err, nil
    end
    red:set_timeout(LISTEN_BLOCK + cfg.read_timeout)
    followed = true
    -- "$": what is added from now on. A certificate stored before the first
    -- read is found by the waits' own polls.
    local key, last = keys:changes(), "$"
    while next(waits) and not exiting() do
        local reply
        reply, err = red:xread("COUNT", LISTEN_BATCH, "BLOCK", LISTEN_BLOCK, "STREAMS", key, last)
        if not reply then
            redis.drop(cfg, red, reply, err)
            return nil, err, reply
        end
        last = woken_by(reply, last)
    end
    -- Closed, not pooled: a blocking read ends with Redis's own reply when
    -- its time is up, even while Redis takes no command (CLIENT PAUSE), so it
    -- must not count as Redis answering again (certagent.redis).
    redis.discard(red)
    return true
end

local start_following

local function follow_changes(premature)
    if premature then
        following = false
        return
    end
    local ok, done, err = pcall(listen)
    following, followed = false, false
    if not ok or not done then
        follow_after = clock() + LISTEN_RETRY
        if not follow_error_logged and not redis.down() then
            follow_error_logged = true
            log(ERR, "certagent: following the changes stream ", keys:changes(), " for held handshakes: ",
                tostring(ok and err or done), "; their certificates are polled for every ",
                MAX_INTERVAL * 1000, " ms instead")
        end
        return
    end
    follow_error_logged = false
    -- A wait may have begun while the last read was ending.
    start_following()
end

-- start_following starts the follower of the changes stream unless it runs
-- or failed less than LISTEN_RETRY ago.
start_following = function()
    if following or exiting() or not next(waits) or clock() < follow_after then
        return
    end
    local ok, err = timer_at(0, follow_changes)
    if not ok then
        follow_after = clock() + LISTEN_RETRY
        log(ERR, "certagent: cannot follow the changes stream for held handshakes: ", err)
        return
    end
    following = true
end

-- run polls Redis for name until its certificate is there or the wait is
-- over; mark is what the handshake's own lookup read (nil: not read), w
-- the shared wait, whose nudge the follower of the changes stream posts.
-- It returns the entry or nil, and how the wait ended.
local function run(name, mark, started, w)
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
            w.nudge:wait(max(0.001, min(interval, limit - t)))
            interval = min(interval * 2, (seen and followed) and FOLLOWED_INTERVAL or MAX_INTERVAL)
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
    w = { sema = semaphore.new(0), nudge = semaphore.new(0), waiters = 0,
          ends = t + cfg.first_handshake_wait + overrun + SLACK }
    waits[name] = w
    stats.incr("wait_pollers")
    start_following()
    local ok, entry, result = pcall(run, name, mark, t, w)
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
