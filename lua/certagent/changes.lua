-- Follows the changes stream (docs/redis-schema.md): the agent appends a name
-- there in the same transaction as every write or deletion of its certificate
-- record. Each worker reads the entries after the last one it has seen every
-- changes_interval seconds and drops those names from the cache, so a renewed,
-- revoked or deleted certificate is served no longer than that, whatever
-- cache_ttl says. A worker that finds entries it had not read trimmed away
-- drops its whole cache. An entry announcing a new version of the published
-- allow rules makes the worker read them again (certagent.rules).
local ngx = ngx
local cache = require("certagent.cache")
local index = require("certagent.index")
local rules = require("certagent.rules")
local redis = require("certagent.redis")
local stats = require("certagent.stats")

local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local null = ngx.null
local shared = ngx.shared
local exiting = ngx.worker.exiting
local every = ngx.timer.every
local timer_at = ngx.timer.at
local type = type
local pcall = pcall
local tonumber = tonumber
local tostring = tostring
local match = string.match

local _M = { _VERSION = "0.1.0" }

-- Entries read per command; a worker further behind reads again at once.
local BATCH = 500
-- Reads per poll at most, so that one poll cannot monopolise the worker.
local MAX_READS = 20

local cfg, keys
-- This worker's position: the ID of the last entry it has applied and its
-- number in the stream (XINFO entries-added counts from 1). nil until the
-- first successful poll.
local last_id, last_pos
local polling = false
local failing = false

function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    return true
end

-- compare_ids orders two stream IDs ("<ms>-<seq>").
local function compare_ids(a, b)
    local a_ms, a_seq = match(a, "^(%d+)-(%d+)$")
    local b_ms, b_seq = match(b, "^(%d+)-(%d+)$")
    a_ms, b_ms = tonumber(a_ms) or 0, tonumber(b_ms) or 0
    if a_ms ~= b_ms then
        return a_ms < b_ms and -1 or 1
    end
    a_seq, b_seq = tonumber(a_seq) or 0, tonumber(b_seq) or 0
    if a_seq == b_seq then
        return 0
    end
    return a_seq < b_seq and -1 or 1
end
_M.compare_ids = compare_ids

-- stream_info turns an XINFO STREAM reply into { added, length, last, first }.
-- added is nil before Redis 7.0, which does not count entries.
local function stream_info(reply)
    local info = {}
    for i = 1, #reply - 1, 2 do
        local k, v = reply[i], reply[i + 1]
        if k == "entries-added" then
            info.added = tonumber(v)
        elseif k == "length" then
            info.length = tonumber(v)
        elseif k == "last-generated-id" then
            info.last = v
        elseif k == "first-entry" and type(v) == "table" then
            info.first = v[1]
        end
    end
    return info
end

local function remember(id, pos)
    last_id, last_pos = id, pos
    local dict = shared[cfg.certs_dict]
    dict:set("changes:last", id)
    dict:set("changes:pos", pos)
end

local function flush(why, info)
    log(WARN, "certagent: ", why, "; dropping every cached certificate")
    cache.flush()
    index.invalidate()
    rules.announce(nil) -- an announcement of new rules may be lost too
    remember(info and info.last or "0-0", info and info.added or 0)
end

-- check compares the stream with this worker's position and reports whether
-- the entries after it can still be read; when not, it drops the cache and
-- moves the position to the end of the stream.
local function check(info_reply)
    if info_reply == false or info_reply == null or type(info_reply) ~= "table" then
        -- No stream (a new or emptied Redis): nothing to read.
        if last_pos ~= 0 or last_id ~= "0-0" then
            flush("the changes stream is gone", nil)
        end
        return false
    end
    local info = stream_info(info_reply)
    if not info.last then
        return false
    end
    if info.added then
        if info.added < last_pos then
            flush("the changes stream was recreated", info)
            return false
        end
        -- The oldest entry still there is number added - length + 1.
        if info.length > 0 and info.added - info.length + 1 > last_pos + 1 then
            flush("changes were trimmed before this worker read them", info)
            return false
        end
    elseif info.first and last_id ~= "0-0" and compare_ids(info.first, last_id) > 0 then
        -- Before Redis 7.0: the entry after ours may have been trimmed.
        flush("changes were trimmed before this worker read them", info)
        return false
    end
    return true
end

-- start sets this worker's position: where the workers left off (the shared
-- dict outlives a reload), else the end of the stream with the shared dict
-- emptied, since nothing says which changes it has seen. On failure it
-- returns nil, the error and, as lua-resty-redis does, false for an error
-- reply (nothing for no reply).
local function start(red)
    local dict = shared[cfg.certs_dict]
    local id, pos = dict:get("changes:last"), dict:get("changes:pos")
    if id and pos then
        last_id, last_pos = id, pos
        return true
    end
    local reply, err = red:xinfo("STREAM", keys:changes())
    if not reply then
        if err and match(tostring(err), "no such key") then
            cache.flush()
            remember("0-0", 0)
            return true
        end
        return nil, err, reply
    end
    local info = stream_info(reply)
    cache.flush()
    remember(info.last or "0-0", info.added or 0)
    return true
end

-- read applies the entries after this worker's position; it returns whether
-- a full batch came back (there may be more), or fails as start does.
local function read(red)
    red:init_pipeline(2)
    red:xinfo("STREAM", keys:changes())
    red:xread("COUNT", BATCH, "STREAMS", keys:changes(), last_id)
    local replies, err = red:commit_pipeline()
    if not replies then
        return nil, err
    end
    local info_reply, entries_reply = replies[1], replies[2]
    if type(info_reply) == "table" and info_reply[1] == false then
        if not match(tostring(info_reply[2]), "no such key") then
            return nil, info_reply[2], false
        end
        info_reply = false
    end
    if type(entries_reply) == "table" and entries_reply[1] == false then
        return nil, entries_reply[2], false
    end
    if not check(info_reply) then
        return false
    end
    if entries_reply == null or type(entries_reply) ~= "table" or not entries_reply[1] then
        return false
    end
    local entries = entries_reply[1][2]
    local id, pos = last_id, last_pos
    for i = 1, #entries do
        local entry = entries[i]
        local fields = entry[2]
        for j = 1, #fields - 1, 2 do
            if fields[j] == "name" then
                index.add(fields[j + 1])
                cache.invalidate(fields[j + 1])
            elseif fields[j] == "version" then
                rules.announce(fields[j + 1]) -- a new version of the published allow rules
            end
        end
        id, pos = entry[1], pos + 1
    end
    remember(id, pos)
    return #entries >= BATCH
end

local function poll_once()
    local red, err = redis.connect(cfg)
    local ok = red ~= nil
    local res
    if ok and not last_id then
        ok, err, res = start(red)
    end
    local reads = 0
    while ok and reads < MAX_READS do
        local more
        more, err, res = read(red)
        reads = reads + 1
        if more == nil then
            ok = false
        elseif not more then
            break
        end
    end
    if red then
        if ok then
            redis.release(cfg, red)
        else
            redis.drop(cfg, red, res, err)
        end
    end
    if ok then
        -- Only now: this worker follows the stream from before the build.
        index.maintain()
    end
    return ok, err
end

local function poll(premature)
    if premature or polling or exiting() then
        return
    end
    -- ngx.timer.every does not wait for the previous run to end.
    polling = true
    local done, ok, err = pcall(poll_once)
    polling = false
    if not done then
        ok, err = false, ok
    end
    if ok then
        if failing then
            failing = false
            log(WARN, "certagent: reading the changes stream again")
        end
        return
    end
    stats.incr("redis_errors")
    -- An unreachable Redis is logged by certagent.redis, once per outage;
    -- another failure (a refused command, a wrong type) here, once until a
    -- poll succeeds. Either way nothing is dropped from the cache: the
    -- position stays, and the first poll that reads the stream again applies
    -- every change made meanwhile, or drops the whole cache when they were
    -- trimmed away (check).
    if not failing and not redis.down() then
        failing = true
        log(ERR, "certagent: reading the changes stream ", keys:changes(), " at ",
            redis.describe(cfg.redis), ": ", tostring(err),
            "; cached certificates are served until Redis answers or they expire")
    end
end

-- position returns the ID of the last changes entry this worker has applied,
-- or nil before its first successful read.
function _M.position()
    return last_id
end

-- init_worker starts this worker's poll: once at once (a new worker catches
-- up before its first interval), then every changes_interval seconds.
function _M.init_worker()
    local ok, err = timer_at(0, poll)
    if ok then
        ok, err = every(cfg.changes_interval, poll)
    end
    if not ok then
        return nil, "starting the changes poll: " .. tostring(err)
    end
    return true
end

return _M
