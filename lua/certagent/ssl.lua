-- ssl_certificate_by_lua: serve the certificate stored in Redis for the SNI
-- name, or leave the server's own (fallback) certificate in place. A name
-- without a certificate is appended to the requests stream, out of band.
local ngx = ngx
local ngx_ssl = require("ngx.ssl")
local lrucache = require("resty.lrucache")
local names = require("certagent.names")
local redis = require("certagent.redis")

local log = ngx.log
local ERR = ngx.ERR
local null = ngx.null
local now = ngx.time
local timer_at = ngx.timer.at
local shared = ngx.shared
local tonumber = tonumber
local tostring = tostring
local type = type
local min = math.min

local server_name = ngx_ssl.server_name
local clear_certs = ngx_ssl.clear_certs
local set_cert = ngx_ssl.set_cert
local set_priv_key = ngx_ssl.set_priv_key
local parse_pem_cert = ngx_ssl.parse_pem_cert
local parse_pem_priv_key = ngx_ssl.parse_pem_priv_key

local _M = { _VERSION = "0.1.0" }

-- key_matches(cert, key) checks that the leaf of a parsed chain belongs to the
-- parsed key before clear_certs: once the fallback is cleared, a key that
-- does not fit would fail the handshake. Without OpenSSL's symbols (an
-- unexpected build) the check is skipped.
local key_matches
do
    local ok, ffi = pcall(require, "ffi")
    if ok then
        ok = pcall(ffi.cdef, [[
            int OPENSSL_sk_num(const void *sk);
            void *OPENSSL_sk_value(const void *sk, int i);
            int X509_check_private_key(const void *x509, const void *pkey);
            void ERR_clear_error(void);
        ]])
        local C = ffi.C
        if ok and pcall(function() return C.OPENSSL_sk_num and C.X509_check_private_key end) then
            key_matches = function(cert, key)
                if C.OPENSSL_sk_num(cert) < 1 then
                    return false
                end
                local leaf = C.OPENSSL_sk_value(cert, 0)
                if C.X509_check_private_key(leaf, key) == 1 then
                    return true
                end
                C.ERR_clear_error()
                return false
            end
        end
    end
    if not key_matches then
        key_matches = function() return true end
    end
end

local cfg, keys, cache

-- init is called by certagent.init with the validated configuration. The
-- per-worker cache is created here: init_by_lua runs before the fork and
-- every worker gets its own copy.
function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    local err
    cache, err = lrucache.new(cfg.lru_size)
    if not cache then
        return nil, "creating the certificate cache: " .. tostring(err)
    end
    return true
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
            return
        end
        redis.discard(red)
    end
    -- Forget the name so a later handshake records it again.
    if dict then
        dict:delete(name)
    end
    log(ERR, "certagent: recording the request for ", name, " failed: ", err)
end

-- request records name in the stream at most once per request_window.
local function request(name)
    local dict = shared[cfg.requests_dict]
    if not dict then
        log(ERR, "certagent: lua_shared_dict ", cfg.requests_dict, " is not defined")
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

-- record returns the usable fields of an HMGET reply, or nil when there is no
-- record or it has expired.
local function record(reply, t)
    if type(reply) ~= "table" or reply[1] == null or reply[1] == nil then
        return nil
    end
    local not_after = tonumber(reply[3])
    if not_after and not_after <= t then
        return nil -- expired: never serve it
    end
    return { fullchain = reply[1], key = reply[2], not_after = not_after }
end

local function fetch(name, parent)
    local red, err = redis.connect(cfg)
    if not red then
        return nil, err
    end
    red:init_pipeline(parent and 2 or 1)
    red:hmget(keys:cert(name), "fullchain", "key", "not_after")
    if parent then
        red:hmget(keys:wildcard(parent), "fullchain", "key", "not_after")
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

local function serve(entry)
    local ok, err = clear_certs()
    if not ok then
        return nil, "clear_certs: " .. tostring(err)
    end
    ok, err = set_cert(entry.cert)
    if not ok then
        return nil, "set_cert: " .. tostring(err)
    end
    ok, err = set_priv_key(entry.key)
    if not ok then
        return nil, "set_priv_key: " .. tostring(err)
    end
    return true
end

-- parse turns a record into the cached entry, or nil and why it is unusable.
local function parse(rec)
    if type(rec.fullchain) ~= "string" or type(rec.key) ~= "string" then
        return nil, "fields fullchain or key missing"
    end
    if not rec.not_after then
        return nil, "field not_after missing or not a number"
    end
    local cert, err = parse_pem_cert(rec.fullchain)
    if not cert then
        return nil, "fullchain: " .. tostring(err)
    end
    local key
    key, err = parse_pem_priv_key(rec.key)
    if not key then
        return nil, "key: " .. tostring(err)
    end
    if not key_matches(cert, key) then
        return nil, "the key does not belong to the first certificate of fullchain"
    end
    return { cert = cert, key = key, not_after = rec.not_after }
end

-- handle is the body of ssl_certificate_by_lua. It returns nothing: on every
-- path where it does not set a certificate, nginx uses the fallback.
function _M.handle()
    local raw = server_name()
    if not raw then
        return -- no SNI
    end
    local name = names.normalize(raw)
    if not name then
        return -- IP literal, garbage: fallback, nothing recorded
    end

    local t = now()
    local entry, stale = cache:get(name)
    if entry then
        if entry.bad then
            return -- unusable record, already logged
        end
        if entry.not_after > t then
            local ok, err = serve(entry)
            if not ok then
                log(ERR, "certagent: serving the cached certificate for ", name, ": ", err)
            end
            return
        end
        cache:delete(name)
    end

    local parent = names.parent(name)
    local replies, err = fetch(name, parent)
    if not replies then
        if stale and not stale.bad and stale.not_after > t then
            local ok = serve(stale)
            log(ERR, "certagent: ", err, "; ", ok and "serving the cached certificate" or "using the fallback",
                " for ", name)
            return
        end
        log(ERR, "certagent: ", err, "; using the fallback certificate for ", name)
        return
    end

    local rec = record(replies[1], t)
    local source = name
    if not rec and parent then
        rec = record(replies[2], t)
        source = "*." .. parent
    end
    if not rec then
        request(name)
        return
    end

    entry, err = parse(rec)
    if not entry then
        cache:set(name, { bad = true }, cfg.error_ttl)
        log(ERR, "certagent: the certificate record ", keys:cert(source), " for ", name,
            " is unusable (", err, "); using the fallback certificate")
        return
    end
    cache:set(name, entry, min(cfg.cache_ttl, entry.not_after - t))
    local ok
    ok, err = serve(entry)
    if not ok then
        log(ERR, "certagent: serving the certificate for ", name, ": ", err)
    end
end

-- flush empties this worker's certificate cache.
function _M.flush()
    if cache then
        cache:flush_all()
    end
end

return _M
