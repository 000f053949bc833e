-- ssl_certificate_by_lua: serve the certificate stored in Redis for the SNI
-- name, or leave the server's own (fallback) certificate in place. A name
-- without a certificate is appended to the requests stream, out of band.
--
-- A name no published rule can allow (certagent.rules) and that neither
-- this worker's LRU nor the name index (certagent.index) knows a record for
-- is answered first, with the fallback: it can have no certificate.
--
-- Lookup order for a.b.example: the cache (certagent.cache: this worker's
-- LRU, then the shared dict) for the records "a.b.example" and "*.b.example",
-- the name index (certagent.index) for records Redis does not have, then one
-- pipelined Redis round trip for whichever of the two is still unknown. The
-- exact record wins over the wildcard.
--
-- A name without a certificate may then be held (certagent.wait) while the
-- agent issues it; the wait reads the agent's issuing mark.
local ngx = ngx
local ngx_ssl = require("ngx.ssl")
local names = require("certagent.names")
local redis = require("certagent.redis")
local cache = require("certagent.cache")
local index = require("certagent.index")
local stats = require("certagent.stats")
local wait = require("certagent.wait")
local rules = require("certagent.rules")
local selftest = require("certagent.selftest")

local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local null = ngx.null
local now = ngx.time
local timer_at = ngx.timer.at
local shared = ngx.shared
local crc32_long = ngx.crc32_long
local tonumber = tonumber
local tostring = tostring
local type = type
local pairs = pairs
local floor = math.floor
local min = math.min
local byte = string.byte
local find = string.find

local server_name = ngx_ssl.server_name
local clear_certs = ngx_ssl.clear_certs
local set_cert = ngx_ssl.set_cert
local set_priv_key = ngx_ssl.set_priv_key

local ABSENT = cache.ABSENT

local _M = { _VERSION = "0.1.0" }

local cfg, keys

local poll

-- init is called by certagent.init with the validated configuration.
function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    wait.init(config, poll, key_builder)
    rules.init(config, key_builder)
    return cache.init(config)
end

-- Names whose XADD failed (Redis down, or out of memory with noeviction)
-- are kept by the worker that failed to record them and appended again once
-- Redis takes writes, after a pause doubling from RETRY_FIRST to RETRY_MOST
-- seconds: a name is not lost with its failed write, nor left waiting for its
-- visitor to come back after request_window. At most RETRY_MAX names are kept
-- per worker; past that a name is forgotten, for a later handshake to record.
local RETRY_MAX, RETRY_FIRST, RETRY_MOST = 1000, 1, 5
local retry_names, retry_count, retry_pause, retry_scheduled = {}, 0, 0, false
local retry_kept

local function append(red, name)
    return red:xadd(keys:requests(), "MAXLEN", "~", cfg.stream_maxlen, "*",
                    "name", name, "node", cfg.node)
end

-- forget lets a later handshake record name again (through any worker).
local function forget(name)
    local dict = shared[cfg.requests_dict]
    if dict then
        dict:delete(name)
    end
end

local function schedule_retry()
    if retry_scheduled then
        return
    end
    retry_pause = retry_pause == 0 and RETRY_FIRST or min(retry_pause * 2, RETRY_MOST)
    local ok, err = timer_at(retry_pause, retry_kept)
    if ok then
        retry_scheduled = true
        return
    end
    log(ERR, "certagent: cannot schedule recording the ", retry_count, " names kept: ", err)
    for name in pairs(retry_names) do
        forget(name)
    end
    retry_names, retry_count, retry_pause = {}, 0, 0
end

local function keep(name, err)
    if retry_names[name] then
        return
    end
    if retry_count >= RETRY_MAX then
        forget(name)
        return
    end
    if retry_count == 0 and not redis.down() then -- an outage is logged once, by certagent.redis
        log(ERR, "certagent: recording the request for ", name, " failed: ", err,
            "; names are kept and recorded once Redis takes writes again")
    end
    retry_names[name] = true
    retry_count = retry_count + 1
    schedule_retry()
end

retry_kept = function(premature)
    retry_scheduled = false
    if premature then
        -- The worker is exiting: let a later handshake record them.
        for name in pairs(retry_names) do
            forget(name)
        end
        retry_names, retry_count = {}, 0
        return
    end
    local red = redis.connect(cfg)
    local recorded = 0
    if red then
        for name in pairs(retry_names) do
            local res = append(red, name)
            if not res then
                break
            end
            retry_names[name] = nil
            retry_count = retry_count - 1
            recorded = recorded + 1
            stats.incr("recorded")
        end
        if retry_count == 0 then
            redis.release(cfg, red)
        else
            redis.discard(red)
        end
    end
    if retry_count == 0 then
        retry_pause = 0
        log(WARN, "certagent: Redis takes writes again; recorded the ", recorded, " names kept meanwhile")
        return
    end
    stats.incr("redis_errors")
    schedule_retry()
end

local function xadd(premature, name)
    if premature then
        -- The worker is exiting: let another worker record the name.
        forget(name)
        return
    end
    local red, err = redis.connect(cfg)
    if red then
        local res
        res, err = append(red, name)
        if res then
            redis.release(cfg, red)
            stats.incr("recorded")
            return
        end
        redis.discard(red)
    end
    stats.incr("redis_errors")
    keep(name, err)
end

-- Handshakes for names without a certificate, counted per second for the
-- node: from index_threshold on (a flood of such names), the name index
-- answers for names the cache does not know instead of Redis. Below it Redis
-- is asked, so a certificate stored a moment ago is served on the very next
-- handshake rather than after the next read of the changes stream.
local function flooding()
    local dict = shared[cfg.requests_dict]
    local second = floor(ngx.now())
    local misses = (dict:get("misses:" .. second) or 0) + (dict:get("misses:" .. (second - 1)) or 0)
    return misses >= cfg.index_threshold
end

local function count_miss()
    shared[cfg.requests_dict]:incr("misses:" .. floor(ngx.now()), 1, 0, 3)
end

-- take_token takes one of the node's request tokens: a bucket of
-- request_burst tokens refilled at request_rate a second, so a burst of new
-- names (a batch of new sites) is recorded at once and a sustained flood at
-- request_rate. Workers update the bucket without a lock; a race between two
-- of them can let a token more through, never block one.
local function take_token(dict)
    local t = ngx.now()
    local level = dict:get("bucket:level")
    local last = dict:get("bucket:time")
    if not level or not last then
        level, last = cfg.request_burst, t
    end
    level = min(cfg.request_burst, level + (t - last) * cfg.request_rate)
    if level < 1 then
        return false
    end
    dict:set("bucket:level", level - 1)
    dict:set("bucket:time", t)
    return true
end

-- request records name in the stream at most once per request_window, and
-- only with a token of the node's bucket: a flood of random names must
-- neither cost a Redis write per handshake nor push the names of real
-- visitors out of the capped stream. A name without a token is not marked,
-- so a later handshake records it. Nor is a name no agent would take
-- (certagent.rules); mark is what the lookup read of its issuing mark, whose
-- refusal is remembered for the handshakes after this one. It returns true when the name is in the stream or
-- on its way there (this window), so an agent may take it.
local function request(name, mark)
    local dict = shared[cfg.requests_dict]
    if not dict then
        log(ERR, "certagent: lua_shared_dict ", cfg.requests_dict, " is not defined")
        return
    end
    count_miss()
    stats.incr("misses")
    local judged = rules.judge(name)
    if judged then
        stats.incr("judged_" .. judged)
        return false
    end
    if mark == wait.REFUSED then
        -- Later handshakes are spared; this one still records the name
        -- (once per window), as the refusal may predate new rules.
        rules.refused(name)
    end
    -- The window holds the version of the rules the name was recorded
    -- under: under new ones (the allowlist changed) an agent may decide
    -- otherwise, and hears of the name at once instead of a window later.
    local version = rules.version() or 0
    local recorded = dict:get(name)
    if recorded == version then
        return true
    end
    if not take_token(dict) then
        return false
    end
    local ok, err
    if recorded == nil then
        ok, err = dict:add(name, version, cfg.request_window)
    else
        ok, err = dict:set(name, version, cfg.request_window)
    end
    if not ok then
        if err ~= "exists" then
            log(ERR, "certagent: shared dict ", cfg.requests_dict, ": ", err)
            return false
        end
        return true
    end
    ok, err = timer_at(0, xadd, name)
    if not ok then
        dict:delete(name)
        log(ERR, "certagent: cannot schedule the request for ", name, ": ", err)
        return false
    end
    return true
end

local function wrong_type(err)
    return type(err) == "string" and find(err, "WRONGTYPE", 1, true) == 1
end

-- fetch reads the records named in recs (one or two) in one round trip,
-- and with mark_name the issuing mark of that name in the same one. It
-- returns the records' replies and the mark (certagent.wait's names). A
-- refused GET of the mark (an ACL without it) does not fail the lookup.
local function fetch(recs, n, mark_name)
    local red, err = redis.connect(cfg)
    if not red then
        return nil, err
    end
    red:init_pipeline(mark_name and n + 1 or n)
    for i = 1, n do
        red:hmget(keys:cert(recs[i]), "fullchain", "key", "not_after", "chain_der", "key_der", "der_crc32")
    end
    if mark_name then
        red:get(keys:issuing(mark_name))
    end
    local replies
    replies, err = red:commit_pipeline()
    if not replies then
        redis.drop(cfg, red, replies, err)
        return nil, "Redis at " .. redis.describe(cfg.redis) .. ": " .. tostring(err)
    end
    redis.release(cfg, red)
    for i = 1, n do
        local reply = replies[i]
        -- A record key of another type is the record's fault, not Redis's:
        -- learn finds it unusable.
        if type(reply) == "table" and reply[1] == false and not wrong_type(reply[2]) then
            return nil, "Redis at " .. redis.describe(cfg.redis) .. ": " .. tostring(reply[2])
        end
    end
    local mark
    if mark_name then
        mark = wait.parse_mark(replies[n + 1], keys:issuing(mark_name))
    end
    return replies, nil, mark
end

-- pem_crc32 is crc32_long(fullchain .. key_pem) without the concatenation,
-- a 2 KB string a cold handshake: zlib's crc32 (the same CRC-32, in a
-- library nginx links), run over key_pem from where fullchain left it, about
-- a quarter of the CPU. Without the symbol it concatenates.
local pem_crc32 = function(fullchain, key_pem)
    return crc32_long(fullchain .. key_pem)
end
do
    local ok, ffi = pcall(require, "ffi")
    ok = ok and pcall(ffi.cdef, "unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len);")
        and pcall(function() return ffi.C.crc32 end)
    if ok then
        local zlib_crc32 = ffi.C.crc32
        pem_crc32 = function(fullchain, key_pem)
            return tonumber(zlib_crc32(zlib_crc32(0, fullchain, #fullchain), key_pem, #key_pem))
        end
    end
end

-- der_of_pem tells whether a record's DER fields were made from its PEM
-- fields: der_crc32 is their CRC-32 (docs/redis-schema.md).
local function der_of_pem(fullchain, key_pem, crc)
    return type(crc) == "string" and type(fullchain) == "string" and type(key_pem) == "string"
        and tonumber(crc) == pem_crc32(fullchain, key_pem)
end

-- learn turns the HMGET reply for rec into the cache's answer (an entry, a
-- bad marker or ABSENT) and caches it.
local function learn(rec, reply, t, started)
    if type(reply) ~= "table" or reply[1] == null or reply[1] == nil then
        cache.put_absent(rec, started)
        return ABSENT
    end
    local not_after = tonumber(reply[3])
    if not_after and not_after <= t then
        cache.put_absent(rec, started) -- expired: never serve it
        return ABSENT
    end
    local fullchain = reply[1] ~= null and reply[1] or nil
    local key_pem = reply[2] ~= null and reply[2] or nil
    local chain_der, key_der = reply[4], reply[5] -- absent (ngx.null) in an older agent's record
    if not der_of_pem(fullchain, key_pem, reply[6]) then
        chain_der, key_der = nil, nil -- the PEM was replaced without its DER: serve the PEM
    end
    local entry, err
    if reply[1] == false then
        err = tostring(reply[2]) -- WRONGTYPE: not a hash
    else
        entry, err = cache.parse(fullchain, key_pem, not_after, started, chain_der, key_der)
    end
    if not entry then
        cache.put_bad(rec)
        log(ERR, "certagent: the certificate record ", keys:cert(rec), " is unusable (", err,
            "); using the fallback certificate")
        return { bad = true }
    end
    if entry.der then
        cache.put(rec, entry, chain_der, key_der, started)
    else
        cache.put(rec, entry, fullchain, key_pem, started)
    end
    return entry
end

-- serve sets entry's certificate and key for this handshake and counts it
-- under source (a key of certagent.stats). It returns true when they are set.
local function serve(name, entry, source)
    local ok, err = clear_certs()
    if ok then
        ok, err = set_cert(entry.cert)
        if ok then
            ok, err = set_priv_key(entry.key)
            if not ok then
                err = "set_priv_key: " .. tostring(err)
            end
        else
            err = "set_cert: " .. tostring(err)
        end
    else
        err = "clear_certs: " .. tostring(err)
    end
    if not ok then
        log(ERR, "certagent: serving the certificate for ", name, ": ", err)
        return false
    end
    stats.incr(source)
    return true
end

-- serve_usable serves entry, or for an unusable record (learn logged why)
-- records name in the requests stream as a missing name is, so that the
-- agent, finding the stored record corrupt, orders it again; the handshake
-- gets the fallback meanwhile, without waiting.
local function serve_usable(name, entry, source)
    if entry.bad then
        request(name)
        return false
    end
    return serve(name, entry, source)
end

local SOURCE = { lru = "served_lru", shared = "served_shared" }

-- lookup is what the cache knows about rec, or ABSENT when under a flood the
-- name index says Redis has no such record, or nil; with an entry, the
-- status counter of the layer that held it.
local function lookup(rec, t)
    local known, layer = cache.get(rec, t)
    if known == nil and flooding() and index.absent(rec) then
        return ABSENT
    end
    return known, SOURCE[layer]
end

-- rule_out takes what the caches do not know of name's records (nil) for
-- ABSENT when Redis need not be asked: no agent would issue name
-- (certagent.rules) and the name index says Redis has no such record. A
-- name judged so costs no Redis command at all.
local function rule_out(name, exact, wild_rec, wild)
    if (exact == nil or (wild_rec and wild == nil)) and rules.judge(name) then
        if exact == nil and index.absent(name) then
            exact = ABSENT
        end
        if wild_rec and wild == nil and index.absent(wild_rec) then
            wild = ABSENT
        end
    end
    return exact, wild
end

-- unstored reports whether neither name's record nor its wildcard's can be
-- in Redis: this worker's LRU holds neither (raw, the SNI as sent, was
-- looked up there already) and the name index says Redis has neither.
local function unstored(name, raw)
    local parent = names.parent(name)
    local wild_rec = parent and "*." .. parent
    if (name ~= raw and cache.held(name)) or (wild_rec and cache.held(wild_rec)) then
        return false
    end
    return index.absent_both(name, wild_rec)
end

-- ask fetches, in one round trip, the records of name and of its wildcard
-- that the caches could not answer (nil from lookup), and caches the
-- answers; with_mark adds name's issuing mark to the round trip. It returns
-- the answers for both records (as given when not asked), an error as third
-- value when Redis cannot be asked, and the mark (nil when not read).
local function ask(name, exact, wild_rec, wild, t, with_mark)
    local recs, n = {}, 0
    if exact == nil then
        n = n + 1
        recs[n] = name
    end
    if wild_rec and wild == nil then
        n = n + 1
        recs[n] = wild_rec
    end
    if n == 0 then
        return exact, wild
    end
    local started = cache.clock()
    local replies, err, mark = fetch(recs, n, with_mark and name or nil)
    if not replies then
        return exact, wild, err
    end
    for i = 1, n do
        local answer = learn(recs[i], replies[i], t, started)
        if recs[i] == name then
            exact = answer
        else
            wild = answer
        end
    end
    return exact, wild, nil, mark
end

-- poll is certagent.wait's look at Redis for a held name: its record, its
-- wildcard's and its issuing mark, in one round trip, the records' answers
-- cached as a lookup's are (a certificate goes into the worker's LRU and the
-- shared dict). It returns a usable entry or nil, the mark, and an error
-- when Redis cannot be asked or the record found is unusable.
function poll(name)
    local parent = names.parent(name)
    local wild_rec = parent and "*." .. parent
    local recs = { name, wild_rec }
    local n = wild_rec and 2 or 1
    local started = cache.clock()
    local replies, err, mark = fetch(recs, n, name)
    if not replies then
        stats.incr("redis_errors")
        if not redis.down() then
            log(ERR, "certagent: ", err, "; using the fallback for ", name, " (held for its certificate)")
        end
        return nil, nil, err
    end
    local t = now()
    local found = learn(name, replies[1], t, started)
    if found == ABSENT and n == 2 then
        found = learn(wild_rec, replies[2], t, started)
    end
    if found == ABSENT then
        return nil, mark
    end
    if found.bad then
        return nil, nil, "unusable record" -- learn logged it
    end
    return found, mark
end

-- missing records name (a handshake found no certificate for it) and may
-- hold the handshake while the agent issues one (certagent.wait); mark is
-- what the lookup read of the issuing mark (nil: not read). It returns true
-- when it served the certificate.
local function missing(name, mark)
    local recorded = request(name, mark)
    local entry = wait.await(name, mark, recorded)
    if entry then
        return serve(name, entry, "served_redis")
    end
end

-- mark_of reads name's issuing mark, for the wait of a name Redis has no
-- certificate for (nil when the wait is off or Redis failed: the wait then
-- reads it itself).
local function mark_of(name)
    if not wait.enabled() then
        return nil
    end
    local replies, _, mark = fetch({}, 0, name)
    return replies and mark or nil
end

-- handle returns true when it set a certificate (or the handshake is
-- nginx's own self-test); on every other path nginx uses the fallback.
local function handle()
    if selftest.pending then
        selftest.start(cfg) -- this worker's first handshake: check that it can yield
    end
    local raw = server_name()
    if not raw then
        return -- no SNI
    end
    local t = now()
    -- Clients send the name as it is stored (lowercase, no trailing dot):
    -- the worker cache is keyed by record name, so a hit on the raw SNI is
    -- that name's exact record and needs no normalizing. A raw "*.parent"
    -- must not find the wildcard record, though.
    if byte(raw, 1) ~= 42 then
        local entry = cache.hot(raw, t)
        if entry then
            return serve(raw, entry, "served_lru")
        end
    end
    local name = names.normalize(raw)
    if not name then
        if raw == selftest.NAME then
            return selftest.answer(cfg)
        end
        return -- IP literal, garbage: fallback, nothing recorded
    end
    -- A name no published rule can allow, with nothing stored for it, is
    -- answered before any other lookup: a flood of such names (a scanner,
    -- random SNI) costs no shared cache read, no Redis command and no
    -- request. Its misses do not count towards flooding(): it needs no
    -- Redis whatever the rate.
    if rules.outside(name) and unstored(name, raw) then
        stats.incr("misses")
        stats.incr("judged_" .. rules.NO_RULE)
        return
    end

    local exact, exact_source = lookup(name, t)
    if exact and exact ~= ABSENT then
        return serve_usable(name, exact, exact_source)
    end
    local parent = names.parent(name)
    local wild_rec = parent and "*." .. parent
    local wild, wild_source
    if wild_rec then
        wild, wild_source = lookup(wild_rec, t)
    end
    exact, wild = rule_out(name, exact, wild_rec, wild)
    if exact == ABSENT and (not wild_rec or wild ~= nil) then
        if wild == nil or wild == ABSENT then
            return missing(name, nil)
        end
        return serve_usable(name, wild, wild_source)
    end

    -- Ask Redis for what the cache does not know, in one round trip. The
    -- issuing mark is not read with it: most names looked up have a
    -- certificate, whose cold handshake then costs one command; a name found
    -- without one has its mark read next (mark_of).
    local err
    exact, wild, err = ask(name, exact, wild_rec, wild, t, false)
    if err then
        local stale = cache.stale(name, t)
        if not stale and wild_rec then
            stale = cache.stale(wild_rec, t)
        end
        -- An unreachable Redis is logged once per outage (certagent.redis),
        -- not once per handshake.
        if not redis.down() then
            log(ERR, "certagent: ", err, "; ", stale and "serving the cached certificate" or "using the fallback",
                " for ", name)
        end
        stats.incr("redis_errors")
        return stale and serve(name, stale, "served_stale")
    end

    -- What the cache held is counted under its layer; what Redis answered
    -- just now, under redis.
    if exact ~= ABSENT then
        return serve_usable(name, exact, exact_source or "served_redis")
    end
    if wild and wild ~= ABSENT then
        return serve_usable(name, wild, wild_source or "served_redis")
    end
    return missing(name, mark_of(name))
end

-- state returns what is stored for name, the way a handshake would look it
-- up (same caches, same single Redis round trip, the exact record before the
-- wildcard): "yes" (a usable certificate), "no" (none), "bad" (an unusable
-- record), or nil and an error when Redis cannot be asked. With with_mark
-- the round trip also reads name's issuing mark, returned third (nil when
-- Redis was not asked).
function _M.state(name, with_mark)
    local t = now()
    local exact = lookup(name, t)
    if exact and exact ~= ABSENT then
        return exact.bad and "bad" or "yes"
    end
    local parent = names.parent(name)
    local wild_rec = parent and "*." .. parent
    local wild
    if wild_rec then
        wild = lookup(wild_rec, t)
    end
    exact, wild = rule_out(name, exact, wild_rec, wild)
    local err, mark
    exact, wild, err, mark = ask(name, exact, wild_rec, wild, t, with_mark)
    if err then
        stats.incr("redis_errors")
        return nil, err
    end
    if exact ~= ABSENT then
        return exact.bad and "bad" or "yes"
    end
    if wild and wild ~= ABSENT then
        return wild.bad and "bad" or "yes"
    end
    return "no", nil, mark
end

-- request records name in the requests stream (once per request_window, with
-- a token of the rate limit, unless no agent would take it), as a handshake
-- for it would; mark is what state read of its issuing mark. True when an
-- agent may take it.
_M.request = request

-- await holds the caller while the agent issues name's certificate, as a
-- handshake is held (certagent.wait, the same per-name wait and bound); it
-- returns the certificate entry once stored, or nil.
_M.await = wait.await

-- handle is the body of ssl_certificate_by_lua. A handshake it does not set
-- a certificate for gets the fallback, and is counted as such.
function _M.handle()
    if not handle() then
        stats.incr("fallback")
    end
end

-- flush empties this worker's certificate cache and the shared one.
function _M.flush()
    cache.flush()
end

return _M
