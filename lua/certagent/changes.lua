-- Follows the changes stream (docs/redis-schema.md): the agent appends a name
-- there in the same transaction as every write or deletion of its certificate
-- record. One worker of the node, the holder of a lock in the certificate
-- dict, reads the entries after the last one the node has seen every
-- changes_interval seconds and drops those names from the node's shared
-- cache; it writes what every worker must also drop from its own LRU to a
-- log in the same dict, which every worker reads (a few dict reads, no
-- Redis). So a renewed, revoked or deleted certificate is served no longer
-- than that, whatever cache_ttl says, for one Redis read per node instead of
-- one per worker. When entries the node had not read were trimmed away, the
-- whole cache is dropped, in every worker. An entry announcing a new version
-- of the published allow rules makes every worker read them again
-- (certagent.rules).
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
local pairs = pairs
local pcall = pcall
local max = math.max
local min = math.min
local tonumber = tonumber
local tostring = tostring
local match = string.match

local _M = { _VERSION = "0.2.0" }

-- Entries read per command; a worker further behind reads again at once.
local BATCH = 500
-- Reads per poll at most, so that one poll cannot monopolise the worker.
local MAX_READS = 20

-- The certificate dict's keys of this module. The reader holds READER (its
-- pid) for READER_TTL past its last poll, so that a reader that died is
-- replaced. The log is LOG_EPOCH (which names it: a new one after the dict
-- was emptied), LOG_SEQ (its last event's number) and LOG_EVENT .. n, "<field>
-- <value>", kept LOG_TTL seconds and never at the expense of a cached
-- certificate (safe_set): a worker that falls further behind, or finds the
-- dict was too full for an event, drops its whole LRU.
local READER = "changes:reader"
local LOG_EPOCH = "changes:epoch"
local LOG_SEQ = "changes:seq"
local LOG_EVENT = "changes:event:"
local LOG_TTL = 10
-- How often each worker reads the log, at most: its LRU follows the node's
-- reads within this.
local FOLLOW_PERIOD = 0.2

-- kinds says what a field of a changes entry makes the node do, by field
-- name: node(value) once for the node, in the worker that read it (the
-- shared dicts), and worker(value) in every worker, from the log (its own
-- memory). When entries were lost, node_reset runs in the reader and
-- worker_reset in every worker. A new kind of change is one more entry.
local kinds = {
    name = {
        node = function(name)
            index.add(name)
            cache.invalidate(name)
        end,
        worker = cache.forget,
        node_reset = function()
            cache.flush()
            index.invalidate()
        end,
        worker_reset = cache.forget_all,
    },
    -- A new version of the published allow rules: every worker reads them
    -- again; after lost entries too, which may have held an announcement.
    version = {
        worker = rules.announce,
        worker_reset = function()
            rules.announce(nil)
        end,
    },
}
_M.kinds = kinds

local cfg, keys
-- The node's position while this worker reads for it: the ID of the last
-- entry applied and its number in the stream (XINFO entries-added counts
-- from 1). Loaded from the shared dict at each poll, since the reader may
-- change.
local last_id, last_pos
local polling = false
local failing = false
-- This worker's place in the log (taken at its start, init_worker), and the
-- last entry of the stream whose changes it has applied (nil before its
-- first read of the log).
local log_epoch, log_seq, applied_id
local epochs = 0
-- The log's place the master noted before it warmed the cache of the new
-- workers (start_from), where they start instead of at their own start.
local held_place

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

-- new_log starts a new log: every worker that read the last one runs
-- worker_reset, as the node dropped what it knew.
local function new_log(dict)
    epochs = epochs + 1
    -- The number first: a worker reading between the two writes then sees
    -- the old log at 0, and the new one at its next read (a reset), rather
    -- than the new log at the old number, which would skip the new log's
    -- first events up to that number.
    dict:set(LOG_SEQ, 0)
    dict:set(LOG_EPOCH, ngx.worker.pid() .. "." .. ngx.now() .. "." .. epochs)
end

-- publish appends an event for every worker to the log.
local function publish(dict, field, value)
    if not dict:get(LOG_EPOCH) then
        new_log(dict)
    end
    local n = dict:incr(LOG_SEQ, 1, 0)
    if not n or not dict:safe_set(LOG_EVENT .. n, field .. " " .. value, LOG_TTL) then
        new_log(dict) -- a full dict: the workers cannot follow, they start over
    end
end

-- apply does what one field of an entry asks (kinds).
local function apply(dict, field, value)
    local kind = kinds[field]
    if not kind then
        return
    end
    if kind.node then
        kind.node(value)
    end
    if kind.worker then
        publish(dict, field, value)
    end
end

local function flush(why, info)
    log(WARN, "certagent: ", why, "; dropping every cached certificate")
    for _, kind in pairs(kinds) do
        if kind.node_reset then
            kind.node_reset()
        end
    end
    new_log(shared[cfg.certs_dict])
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
            new_log(dict)
            remember("0-0", 0)
            return true
        end
        return nil, err, reply
    end
    local info = stream_info(reply)
    cache.flush()
    new_log(dict)
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
    local dict = shared[cfg.certs_dict]
    for i = 1, #entries do
        local entry = entries[i]
        local fields = entry[2]
        for j = 1, #fields - 1, 2 do
            apply(dict, fields[j], fields[j + 1])
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
    -- Where the node is, whichever worker read last.
    local dict = shared[cfg.certs_dict]
    last_id, last_pos = dict:get("changes:last"), dict:get("changes:pos")
    if not (last_id and last_pos) then
        last_id, last_pos = nil, nil
    end
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

-- follow applies the log's events after this worker's place to its own
-- memory (kinds' worker), or worker_reset when it cannot: the log is new or
-- has lost events it had not read.
local function follow()
    local dict = shared[cfg.certs_dict]
    -- Read first: the events of every entry up to it are in the log by now.
    local position = dict:get("changes:last")
    local epoch, seq = dict:get(LOG_EPOCH), dict:get(LOG_SEQ) or 0
    local complete = epoch == log_epoch
    for i = log_seq + 1, complete and seq or 0 do
        local event = dict:get(LOG_EVENT .. i)
        local field, value
        if event then
            field, value = match(event, "^(%S+) (.*)$")
        end
        if not field then
            complete = false
            break
        end
        local kind = kinds[field]
        if kind and kind.worker then
            kind.worker(value)
        end
    end
    if not complete then
        for _, kind in pairs(kinds) do
            if kind.worker_reset then
                kind.worker_reset()
            end
        end
    end
    log_epoch, log_seq, applied_id = epoch, seq, position
end

-- reading takes or keeps the node's reader lock for this worker, or tells
-- that another worker holds it.
local function reading()
    local dict = shared[cfg.certs_dict]
    local pid = ngx.worker.pid()
    local ttl = max(3 * cfg.changes_interval, 3)
    local holder = dict:get(READER)
    if holder == pid then
        dict:set(READER, pid, ttl)
        return true
    end
    return holder == nil and dict:add(READER, pid, ttl)
end

-- stop_reading frees the lock of an exiting worker, so that another reads
-- at once (a reload) rather than after the lock's time.
local function stop_reading()
    local dict = shared[cfg.certs_dict]
    if dict:get(READER) == ngx.worker.pid() then
        dict:delete(READER)
    end
end

local function poll(premature)
    if premature or exiting() then
        stop_reading()
        return
    end
    if polling or not reading() then
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
        follow()
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

local function follow_tick(premature)
    if premature then
        return
    end
    local ok, err = pcall(follow)
    if not ok then
        log(ERR, "certagent: reading the node's log of changes: ", tostring(err))
    end
end

-- position returns the ID of the last changes entry whose changes this
-- worker has applied, or nil before the node's first successful read.
function _M.position()
    return applied_id
end

-- place returns the log's current place, which nginx's master notes before
-- it fills the cache its new workers inherit (certagent.cache's warm).
function _M.place()
    local dict = shared[cfg.certs_dict]
    return { epoch = dict:get(LOG_EPOCH), seq = dict:get(LOG_SEQ) or 0 }
end

-- start_from has the workers forked from now on follow the log from place
-- (nil: from their own start), which the master notes before it fills their
-- cache: they forget what changed while it read the shared dict or before
-- they started (a log renewed meanwhile, or events expired, empty their
-- LRU).
function _M.start_from(place)
    held_place = place
end

-- init_worker starts this worker's part: a poll at once (a new node catches
-- up before its first interval) and every changes_interval seconds, which
-- reads Redis when this worker holds the reader lock, and the reading of
-- the node's log.
function _M.init_worker()
    -- The worker follows the log from where it stands now, before it can
    -- cache anything: its first read comes a follow period later (later on
    -- a loaded machine), and a certificate it cached meanwhile may be one
    -- whose change the reader published meanwhile, or that the reader's
    -- start emptied from the node (a new log). Taking the log's end at that
    -- first read instead kept such a certificate for cache_ttl. On a new
    -- node there is no log yet: the first read finds one and drops the LRU.
    -- A worker that inherited certificates from the master (start_from)
    -- follows the log from the master's place instead, and reads it at once:
    -- what changed since, even long before (a worker the master forked
    -- again after a crash, hours after the reload), is dropped before its
    -- first handshake.
    if not held_place then
        local dict = shared[cfg.certs_dict]
        log_epoch, log_seq = dict:get(LOG_EPOCH), dict:get(LOG_SEQ) or 0
    else
        log_epoch, log_seq = held_place.epoch, held_place.seq
        local followed, err = pcall(follow)
        if not followed then
            -- Nothing inherited can be trusted then.
            cache.forget_all()
            log(ERR, "certagent: reading the changes log at the worker's start: ", tostring(err),
                "; dropping the certificates parsed before it")
        end
    end
    local ok, err = timer_at(0, poll)
    if ok then
        ok, err = every(cfg.changes_interval, poll)
    end
    if ok then
        ok, err = every(min(cfg.changes_interval, FOLLOW_PERIOD), follow_tick)
    end
    if not ok then
        return nil, "starting the changes poll: " .. tostring(err)
    end
    return true
end

return _M
