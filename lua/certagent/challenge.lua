-- content_by_lua for /.well-known/acme-challenge/<token>: answers HTTP-01
-- validation requests with the key authorization the agent stored in Redis.
-- Reads only.
local ngx = ngx
local names = require("certagent.names")
local redis = require("certagent.redis")
local stats = require("certagent.stats")

local log = ngx.log
local ERR = ngx.ERR
local null = ngx.null
local header = ngx.header
local find = string.find
local sub = string.sub
local match = string.match
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

local PREFIX = "/.well-known/acme-challenge/"

local cfg, keys

function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    return true
end

local function reply(status, body)
    ngx.status = status
    header["Content-Type"] = "text/plain"
    header["Cache-Control"] = "no-store"
    header["Content-Length"] = #body
    if status == 405 then
        header["Allow"] = "GET, HEAD"
    end
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end
_M.reply = reply

-- host returns the normalized Host of the request without its port.
local function host()
    local h = ngx.var.http_host
    if not h or h == "" then
        return nil
    end
    local without_port = match(h, "^(.*):%d+$")
    if without_port then
        h = without_port
    end
    return names.normalize(h)
end

_M.host = host
_M.PREFIX = PREFIX

function _M.handle()
    local method = ngx.req.get_method()
    if method ~= "GET" and method ~= "HEAD" then
        return reply(405, "method not allowed\n")
    end

    local uri = ngx.var.uri
    if sub(uri, 1, #PREFIX) ~= PREFIX then
        return reply(404, "not found\n")
    end
    local token = sub(uri, #PREFIX + 1)
    if #token < 1 or #token > 128 or find(token, "[^A-Za-z0-9_%-]") then
        return reply(400, "bad token\n")
    end
    local name = host()
    if not name then
        return reply(400, "bad Host\n")
    end

    local red, err = redis.connect(cfg, true)
    if not red then
        stats.incr("redis_errors")
        if not redis.down() then -- an outage is logged once, by certagent.redis
            log(ERR, "certagent: challenge for ", name, ": ", err)
        end
        return reply(503, "storage unavailable\n")
    end
    local value
    value, err = red:get(keys:token(name, token))
    if value == nil then
        redis.drop(cfg, red, value, err)
        stats.incr("redis_errors")
        if not redis.down() then
            log(ERR, "certagent: challenge for ", name, ": Redis at ", redis.describe(cfg.redis), ": ", tostring(err))
        end
        return reply(503, "storage unavailable\n")
    end
    redis.release(cfg, red)
    if value == null then
        stats.incr("challenge_miss")
        return reply(404, "not found\n")
    end
    stats.incr("challenge_hit")
    return reply(200, value)
end

return _M
