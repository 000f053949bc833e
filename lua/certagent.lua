-- certagent: serve certificates that the certagent agent stores in Redis.
--
--   init_by_lua_block      { require("certagent").init() }     (configured by CERTAGENT_* variables)
--   init_worker_by_lua_block { require("certagent").init_worker() }
--   ssl_certificate_by_lua_block { require("certagent").ssl_certificate() }
--   location ^~ /.well-known/acme-challenge/ { content_by_lua_block { require("certagent").acme_challenge() } }
--   location = /certagent-status { content_by_lua_block { require("certagent").status() } }
--   rewrite_by_lua_block { require("certagent").http_on_demand() }   (port-80 server)
--   access_by_lua_block { if not require("certagent").has_certificate() then return ngx.exit(444) end }
--
-- docs/lua.md describes the configuration table. Every entry point runs under
-- pcall: an error in certagent never fails a handshake, the server's own
-- certificate is used instead.
local pcall = pcall
local tostring = tostring
local error = error
local log = ngx.log
local ERR = ngx.ERR
local NOTICE = ngx.NOTICE
local now = ngx.now
local update_time = ngx.update_time
local floor = math.floor

local config = require("certagent.config")
local keys = require("certagent.keys")
local redis = require("certagent.redis")
local stats = require("certagent.stats")

local _M = { _VERSION = "0.1.0" }

local cfg
local ssl, challenge, changes, ondemand -- loaded in init (ngx.ssl needs the http subsystem)

-- warm fills the certificate cache the workers of a reload inherit
-- (certagent.cache's warm) for up to reload_warm seconds. The changes log's
-- place is noted first, and the workers follow the log from there
-- (certagent.changes' start_from) unless nothing was cached: also when the
-- parse failed midway. At the first start the shared dict is empty. A
-- failure costs the warm cache only: the workers parse at first use.
local function warm(c)
    if c.reload_warm <= 0 then
        return
    end
    update_time()
    local started = now()
    local placed, place = pcall(changes.place)
    if not placed then
        log(ERR, "certagent: reading the changes log's place: ", tostring(place),
            "; the new workers parse each certificate at its first use")
        return
    end
    changes.start_from(place)
    log(NOTICE, "certagent: parsing the shared dict's certificates for the new workers, for at most ",
        c.reload_warm, " s")
    local ok, cached, left = pcall(require("certagent.cache").warm, started + c.reload_warm)
    if not ok then
        log(ERR, "certagent: parsing the shared dict's certificates for the new workers: ", tostring(cached))
        return
    end
    if cached == 0 then
        changes.start_from(nil)
    end
    update_time()
    log(NOTICE, "certagent: parsed ", cached, " certificates of the shared dict for the new workers in ",
        floor((now() - started) * 1000), " ms", left > 0 and ("; reload_warm ran out with " .. left ..
        " entries left") or "")
end

-- init validates the configuration and prepares the modules. Every field
-- comes from the table user when it has it, else from its CERTAGENT_<FIELD>
-- environment variable, else from the defaults (certagent.config). It raises
-- an error on an invalid configuration, so nginx refuses to start with it.
function _M.init(user)
    local c, err = config.new(user)
    if not c then
        error("certagent: invalid configuration: " .. err, 2)
    end
    local ok
    ok, err = redis.available()
    if not ok then
        error("certagent: " .. err, 2)
    end
    c.redis_pool = redis.pool_name(c.redis)
    local k = keys.new(c.key_prefix)

    ssl = require("certagent.ssl")
    challenge = require("certagent.challenge")
    ok, err = ssl.init(c, k)
    if not ok then
        error("certagent: " .. err, 2)
    end
    challenge.init(c, k)
    stats.init(c)
    ondemand = require("certagent.ondemand")
    ondemand.init(c)
    ok, err = require("certagent.index").init(c, k)
    if not ok then
        error("certagent: " .. err, 2)
    end
    changes = require("certagent.changes")
    changes.init(c, k)
    cfg = c
    warm(c)
    return true
end

-- init_worker is the body of init_worker_by_lua_block: it starts this
-- worker's reading of the changes stream, which keeps its cache fresh.
function _M.init_worker()
    if not cfg then
        log(ERR, "certagent: init_worker() called before init(); cached certificates will not be refreshed")
        return
    end
    require("certagent.selftest").init_worker(cfg)
    require("certagent.rules").init_worker()
    local ok, started, err = pcall(changes.init_worker)
    if not ok or not started then
        log(ERR, "certagent: ", tostring(ok and err or started),
            "; cached certificates are refreshed only after cache_ttl")
    end
end

-- config returns the active configuration (read-only use).
function _M.config()
    return cfg
end

local warned = false

-- ssl_certificate is the body of ssl_certificate_by_lua_block.
function _M.ssl_certificate()
    if not cfg then
        if not warned then
            warned = true
            log(ERR, "certagent: ssl_certificate() called before init(); using the fallback certificate")
        end
        return
    end
    local ok, err = pcall(ssl.handle)
    if not ok then
        stats.incr("fallback")
        log(ERR, "certagent: ssl_certificate failed: ", tostring(err), "; using the fallback certificate")
    end
end

-- acme_challenge is the content handler of /.well-known/acme-challenge/.
function _M.acme_challenge()
    if not cfg then
        log(ERR, "certagent: acme_challenge() called before init()")
        return ngx.exit(503)
    end
    local ok, err = pcall(challenge.handle)
    if not ok then
        log(ERR, "certagent: acme_challenge failed: ", tostring(err))
        return ngx.exit(500)
    end
end

-- http_on_demand is the body of the port-80 server's rewrite_by_lua_block.
-- On any error the request goes on to the server's own handling.
function _M.http_on_demand()
    if not cfg then
        return
    end
    local ok, err = pcall(ondemand.handle)
    if not ok then
        log(ERR, "certagent: http_on_demand failed: ", tostring(err))
    end
end

-- host_state is what ssl.state says for the request's Host; a request
-- without a valid Host has nothing.
local function host_state()
    local name = challenge.host()
    if not name then
        return "no"
    end
    return ssl.state(name, false)
end

-- has_certificate reports whether the request's Host has a usable stored
-- certificate (its own or a wildcard's), looked up as a handshake would. It
-- lets a catch-all server that closes unknown names (return 444) serve the
-- names certagent issued: access_by_lua_block { if not
-- require("certagent").has_certificate() then return ngx.exit(444) end }.
-- No valid Host, no certificate and a Redis error (logged) are all false.
function _M.has_certificate()
    if not cfg then
        return false
    end
    local ok, state, err = pcall(host_state)
    if not ok or not state then
        -- An unreachable Redis is logged once per outage (certagent.redis).
        if not ok or not redis.down() then
            log(ERR, "certagent: has_certificate failed: ", tostring(ok and err or state), "; answering false")
        end
        return false
    end
    return state == "yes"
end

-- status is the content handler of the status location: the counters in the
-- Prometheus text format.
function _M.status()
    if not cfg then
        log(ERR, "certagent: status() called before init()")
        return ngx.exit(503)
    end
    local ok, text, err = pcall(stats.text)
    if not ok or not text then
        log(ERR, "certagent: status failed: ", tostring(ok and err or text))
        return ngx.exit(503)
    end
    ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(text)
end

return _M
