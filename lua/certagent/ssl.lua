-- ssl_certificate_by_lua: serve the certificate stored in Redis for the SNI
-- name, or leave the server's own (fallback) certificate in place. A name
-- without a certificate is appended to the requests stream, out of band.
--
-- Lookup order for a.b.example: the cache (certagent.cache: this worker's
-- LRU, then the shared dict) for the records "a.b.example" and "*.b.example",
-- the name index (certagent.index) for records Redis does not have, then one
-- pipelined Redis round trip for whichever of the two is still unknown. The
-- exact record wins over the wildcard.
local ngx = ngx
local ngx_ssl = require("ngx.ssl")
local names = require("certagent.names")
local redis = require("certagent.redis")
local cache = require("certagent.cache")
local index = require("certagent.index")
local stats = require("certagent.stats")

local log = ngx.log
local ERR = ngx.ERR
local null = ngx.null
local now = ngx.time
local timer_at = ngx.timer.at
local shared = ngx.shared
local tonumber = tonumber
local tostring = tostring
local type = type
local floor = math.floor
local min = math.min
local byte = string.byte

local server_name = ngx_ssl.server_name
local clear_certs = ngx_ssl.clear_certs
local set_cert = ngx_ssl.set_cert
local set_priv_key = ngx_ssl.set_priv_key

local ABSENT = cache.ABSENT

local _M = { _VERSION = "0.1.0" }

local cfg, keys

-- init is called by certagent.init with the validated configuration.
function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    return cache.init(config)
end

local function xadd(premature, name)
    local dict = shared[cfg.requests_dict]
    if premature then
        -- The worker is exiting: let another worker record the name.
        if dict then
            dict:delete(name)
        end
        return
    end
    local red, err = redis.connect(cfg)
    if red then
        local res
        res, err = red:xadd(keys:requests(), "MAXLEN", "~", cfg.stream_maxlen, "*",
                            "name", name, "node", cfg.node)
        if res then
            redis.release(cfg, red)
            stats.incr("recorded")
            return
        end
        redis.discard(red)
    end
    stats.incr("redis_errors")
    -- Forget the name so a later handshake records it again.
    if dict then
        dict:delete(name)
    end
    log(ERR, "certagent: recording the request for ", name, " failed: ", err)
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
-- so a later handshake records it.
local function request(name)
    local dict = shared[cfg.requests_dict]
    if not dict then
        log(ERR, "certagent: lua_shared_dict ", cfg.requests_dict, " is not defined")
        return
    end
    count_miss()
    stats.incr("misses")
    if dict:get(name) then
        return
    end
    if not take_token(dict) then
        return
    end
    local ok, err = dict:add(name, true, cfg.request_window)
    if not ok then
        if err ~= "exists" then
            log(ERR, "certagent: shared dict ", cfg.requests_dict, ": ", err)
        end
        return
    end
    ok, err = timer_at(0, xadd, name)
    if not ok then
        dict:delete(name)
        log(ERR, "certagent: cannot schedule the request for ", name, ": ", err)
    end
end

-- fetch reads the records named in recs (one or two) in one round trip.
local function fetch(recs, n)
    local red, err = redis.connect(cfg)
    if not red then
        return nil, err
    end
    red:init_pipeline(n)
    for i = 1, n do
        red:hmget(keys:cert(recs[i]), "fullchain", "key", "not_after")
    end
    local replies
    replies, err = red:commit_pipeline()
    if not replies then
        redis.discard(red)
        return nil, "Redis at " .. redis.describe(cfg.redis) .. ": " .. tostring(err)
    end
    redis.release(cfg, red)
    for i = 1, #replies do
        local reply = replies[i]
        if type(reply) == "table" and reply[1] == false then
            return nil, "Redis at " .. redis.describe(cfg.redis) .. ": " .. tostring(reply[2])
        end
    end
    return replies
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
    local entry, err = cache.parse(fullchain, key_pem, not_after, started)
    if not entry then
        cache.put_bad(rec)
        log(ERR, "certagent: the certificate record ", keys:cert(rec), " is unusable (", err,
            "); using the fallback certificate")
        return { bad = true }
    end
    cache.put(rec, entry, fullchain, key_pem, started)
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

-- ask fetches, in one round trip, the records of name and of its wildcard
-- that the caches could not answer (nil from lookup), and caches the
-- answers. It returns the answers for both records (as given when not
-- asked), or an error as third value when Redis cannot be asked.
local function ask(name, exact, wild_rec, wild, t)
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
    local replies, err = fetch(recs, n)
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
    return exact, wild
end

-- handle returns true when it set a certificate; on every other path nginx
-- uses the fallback.
local function handle()
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
        return -- IP literal, garbage: fallback, nothing recorded
    end

    local exact, exact_source = lookup(name, t)
    if exact and exact ~= ABSENT then
        return not exact.bad and serve(name, exact, exact_source)
    end
    local parent = names.parent(name)
    local wild_rec = parent and "*." .. parent
    local wild, wild_source
    if wild_rec then
        wild, wild_source = lookup(wild_rec, t)
    end
    if exact == ABSENT and (not wild_rec or wild ~= nil) then
        if wild == nil or wild == ABSENT then
            return request(name)
        end
        return not wild.bad and serve(name, wild, wild_source)
    end

    -- Ask Redis for what the cache does not know, in one round trip.
    local err
    exact, wild, err = ask(name, exact, wild_rec, wild, t)
    if err then
        local stale = cache.stale(name, t)
        if not stale and wild_rec then
            stale = cache.stale(wild_rec, t)
        end
        log(ERR, "certagent: ", err, "; ", stale and "serving the cached certificate" or "using the fallback",
            " for ", name)
        stats.incr("redis_errors")
        return stale and serve(name, stale, "served_stale")
    end

    -- What the cache held is counted under its layer; what Redis answered
    -- just now, under redis.
    if exact ~= ABSENT then
        return not exact.bad and serve(name, exact, exact_source or "served_redis")
    end
    if wild and wild ~= ABSENT then
        return not wild.bad and serve(name, wild, wild_source or "served_redis")
    end
    request(name)
end

-- state returns what is stored for name, the way a handshake would look it
-- up (same caches, same single Redis round trip, the exact record before the
-- wildcard): "yes" (a usable certificate), "no" (none), "bad" (an unusable
-- record), or nil and an error when Redis cannot be asked.
function _M.state(name)
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
    local err
    exact, wild, err = ask(name, exact, wild_rec, wild, t)
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
    return "no"
end

-- request records name in the requests stream (once per request_window, with
-- a token of the rate limit), as a handshake for it would.
_M.request = request

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
