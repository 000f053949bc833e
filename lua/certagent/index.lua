-- The index of record names: every name Redis has a certificate record for,
-- in a shared dict, so that a handshake for a name that has none (a flood of
-- random names, a scanner) is answered without asking Redis.
--
-- It is built by one worker with SCAN MATCH <prefix>cert:* and kept complete
-- by the changes stream: every name the stream lists is added (a deleted
-- name stays in the index until the next build, which costs only a lookup).
-- Until a build has finished, and whenever the index may have missed a name
-- (changes trimmed away, a new Redis, the dict full), it is not used and
-- every unknown name is looked up in Redis as without it.
local ngx = ngx
local redis = require("certagent.redis")

local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local shared = ngx.shared
local timer_at = ngx.timer.at
local tostring = tostring
local sub = string.sub
local gsub = string.gsub

local _M = { _VERSION = "0.1.0" }

-- Keys of the dict that are not names start with "!", which no name does.
local READY = "!ready"       -- the generation whose build finished
local GENERATION = "!gen"    -- bumped whenever the index may be incomplete
local BUILDING = "!building" -- the lock of the one worker that builds
local FULL = "!full"         -- until when not to build again: the dict was too small
local FULL_PAUSE = 300       -- s
local BUILD_LOCK_TTL = 300   -- s; a worker that died while building frees it
local SCAN_COUNT = 1000

local cfg, keys
local overflow_logged = false

function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    if cfg.name_index then
        local d = shared[cfg.names_dict]
        if not d then
            return nil, "lua_shared_dict " .. cfg.names_dict .. " (names_dict) is not defined"
        end
        -- Created now, while there is room: marking the dict full later
        -- must not need memory.
        d:set(FULL, 0)
    end
    return true
end

local function dict()
    return shared[cfg.names_dict]
end

-- usable reports whether the index holds every record name.
local function usable(d)
    local ready = d:get(READY)
    return ready ~= nil and ready == d:get(GENERATION)
end

-- ready reports whether the index is in use (enabled and complete).
function _M.ready()
    return cfg.name_index and usable(dict())
end

-- absent reports whether the index is usable and rec is not in it: Redis has
-- no record rec (as of the last changes entry this node has read).
function _M.absent(rec)
    if not cfg.name_index then
        return false
    end
    local d = dict()
    return usable(d) and not d:get(rec)
end

-- invalidate marks the index incomplete; the next poll builds it again.
function _M.invalidate()
    if cfg.name_index then
        dict():incr(GENERATION, 1, 0)
    end
end

-- add records that Redis may have a record rec.
function _M.add(rec)
    if not cfg.name_index then
        return
    end
    local d = dict()
    local ok, err = d:safe_set(rec, true)
    if not ok then
        -- Never evict a name: a missing one would hide a certificate.
        d:incr(GENERATION, 1, 0)
        d:set(FULL, ngx.time() + FULL_PAUSE)
        if not overflow_logged then
            overflow_logged = true
            log(ERR, "certagent: lua_shared_dict ", cfg.names_dict, ": ", err,
                "; names without a certificate are looked up in Redis until it is larger")
        end
    end
end

local function build(premature, generation)
    local d = dict()
    if premature then
        d:delete(BUILDING)
        return
    end
    local red, err = redis.connect(cfg)
    if not red then
        d:delete(BUILDING)
        log(WARN, "certagent: building the name index: ", err)
        return
    end
    -- The prefix is the operator's: its glob characters must match literally.
    local pattern = gsub(keys:cert(""), "[%*%?%[%]\\]", "\\%0") .. "*"
    local strip = #keys:cert("") + 1
    local cursor = "0"
    local names = 0
    repeat
        local reply
        reply, err = red:scan(cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
        if not reply then
            redis.drop(cfg, red, reply, err)
            d:delete(BUILDING)
            log(WARN, "certagent: building the name index: ", tostring(err))
            return
        end
        cursor = reply[1]
        local found = reply[2]
        for i = 1, #found do
            _M.add(sub(found[i], strip))
            names = names + 1
        end
        if d:get(GENERATION) ~= generation then
            -- The index was invalidated meanwhile: start over on the next poll.
            redis.release(cfg, red)
            d:delete(BUILDING)
            return
        end
    until cursor == "0"
    redis.release(cfg, red)
    d:set(READY, generation)
    d:delete(BUILDING)
    -- Routine, at every start: below the warn and error levels error_log keeps.
    log(NOTICE, "certagent: name index built: ", names, " records")
end

-- maintain starts a build when the index is not usable and no worker is
-- building it. The changes poll calls it once this worker follows the
-- stream: what the build's SCAN misses was written after, and the stream
-- brings it.
function _M.maintain()
    if not cfg.name_index then
        return
    end
    local d = dict()
    if usable(d) or (d:get(FULL) or 0) > ngx.time() then
        return
    end
    local generation = d:get(GENERATION)
    if not generation then
        d:add(GENERATION, 1)
        generation = d:get(GENERATION)
    end
    if not d:add(BUILDING, true, BUILD_LOCK_TTL) then
        return
    end
    local ok, err = timer_at(0, build, generation)
    if not ok then
        d:delete(BUILDING)
        log(ERR, "certagent: cannot start building the name index: ", err)
    end
end

return _M
