-- rewrite_by_lua of the port-80 server (nginx/certagent-ondemand.conf): a
-- plain-HTTP request for a name without a certificate records the name the
-- way a TLS handshake does (same de-duplication window and rate limit), so
-- issuance starts before the first HTTPS request. What the client gets:
--   http_missing = "pass"  the server's own handling (nothing is changed)
--   http_missing = "503"   503 with Retry-After: http_retry_after
--   http_redirect = true   once the certificate exists, 308 to https://
-- With either of the last two, a request for a name the agent is issuing is
-- held the way a first handshake is (certagent.wait: the same per-name wait
-- and the same bound), so it is redirected or passed on when the
-- certificate is stored during the wait, and gets the 503 otherwise.
-- Challenge requests are left alone: the CA must reach them over HTTP.
local ngx = ngx
local sub = string.sub
local floor = math.floor
local tostring = tostring
local log = ngx.log
local ERR = ngx.ERR

local ssl = require("certagent.ssl")
local redis = require("certagent.redis")
local challenge = require("certagent.challenge")

local _M = { _VERSION = "0.1.0" }

local cfg

function _M.init(config)
    cfg = config
    return true
end

function _M.handle()
    local uri = ngx.var.uri
    if sub(uri, 1, #challenge.PREFIX) == challenge.PREFIX then
        return
    end
    local name = challenge.host()
    if not name then
        return -- no Host, an IP literal, garbage: nothing to issue for
    end
    -- Holding the request only changes its answer with a 503 or a redirect.
    local hold = cfg.http_missing == "503" or cfg.http_redirect
    local state, err, mark = ssl.state(name, hold and cfg.first_handshake_wait > 0)
    if state == "no" then
        local recorded = ssl.request(name, mark)
        if hold and ssl.await(name, mark, recorded) then
            state = "yes"
        end
    end
    if state == "yes" then
        if cfg.http_redirect then
            -- The normalized name, not the raw Host: it is what the
            -- certificate covers, and it cannot carry a header injection.
            return ngx.redirect("https://" .. name .. ngx.var.request_uri, 308)
        end
        return
    end
    if state == "no" then
        if cfg.http_missing == "503" then
            ngx.header["Retry-After"] = tostring(floor(cfg.http_retry_after))
            ngx.header["Cache-Control"] = "no-store"
            return ngx.exit(503)
        end
        return
    end
    if not state and not redis.down() then -- an outage is logged once, by certagent.redis
        log(ERR, "certagent: port-80 request for ", name, ": ", err, "; passing it on")
    end
    -- "bad": a record exists but cannot be served; the agent knows the name.
end

return _M
