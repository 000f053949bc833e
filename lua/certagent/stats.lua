-- Counters of certagent's nginx side, kept in a lua_shared_dict (stats_dict)
-- so that every worker adds to the same numbers, and
-- written out in the Prometheus text format by status(). Counting is one
-- shared dict incr on the handshake path: no lock, no allocation beyond the
-- key, which is a constant string.
local ngx = ngx
local shared = ngx.shared
local log = ngx.log
local ERR = ngx.ERR
local concat = table.concat
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

-- The counters: key in the dict, metric name, labels. The order is the
-- output's; a metric's series are consecutive.
local series = {
    { "served_lru", "certagent_nginx_certificates_served_total", '{source="worker_lru"}' },
    { "served_shared", "certagent_nginx_certificates_served_total", '{source="shared_dict"}' },
    { "served_redis", "certagent_nginx_certificates_served_total", '{source="redis"}' },
    { "served_stale", "certagent_nginx_certificates_served_total", '{source="stale"}' },
    { "misses", "certagent_nginx_misses_total", "" },
    { "fallback", "certagent_nginx_fallback_total", "" },
    { "recorded", "certagent_nginx_names_recorded_total", "" },
    { "redis_errors", "certagent_nginx_redis_errors_total", "" },
    { "challenge_hit", "certagent_nginx_challenges_total", '{result="hit"}' },
    { "challenge_miss", "certagent_nginx_challenges_total", '{result="miss"}' },
}

local help = {
    certagent_nginx_certificates_served_total =
        "TLS handshakes answered with a stored certificate, by where it was found (stale: the cache during a Redis error).",
    certagent_nginx_misses_total = "TLS handshakes for a name without a certificate.",
    certagent_nginx_fallback_total = "TLS handshakes answered with the server's own (fallback) certificate, for any reason.",
    certagent_nginx_names_recorded_total = "Names appended to the requests stream.",
    certagent_nginx_redis_errors_total =
        "Failed Redis round trips: certificate lookups, stream appends, challenge lookups, changes stream reads.",
    certagent_nginx_challenges_total = "HTTP-01 challenge requests, by whether Redis held the token.",
}

-- The dict is looked up by name on each call, as the other modules do: the
-- configuration is only known after init.
local dict_name

-- init is called by certagent.init. A missing dict disables counting (one
-- error line) rather than refusing to start: counters must never cost a
-- certificate.
function _M.init(config)
    dict_name = config.stats_dict
    if not shared[dict_name] then
        log(ERR, "certagent: lua_shared_dict ", dict_name, " (stats_dict) is not defined; counters are off")
    end
    return true
end

-- incr adds one to the counter key (a key of the series table).
function _M.incr(key)
    local dict = dict_name and shared[dict_name]
    if dict then
        dict:incr(key, 1, 0)
    end
end

-- text returns every counter in the Prometheus text format (version 0.0.4),
-- or nil and an error when the dict is not defined.
function _M.text()
    local dict = dict_name and shared[dict_name]
    if not dict then
        return nil, "lua_shared_dict " .. tostring(dict_name) .. " (stats_dict) is not defined"
    end
    local out, n, last = {}, 0, nil
    for i = 1, #series do
        local s = series[i]
        local metric = s[2]
        if metric ~= last then
            last = metric
            n = n + 1
            out[n] = "# HELP " .. metric .. " " .. help[metric] .. "\n# TYPE " .. metric .. " counter\n"
        end
        n = n + 1
        out[n] = metric .. s[3] .. " " .. tostring(dict:get(s[1]) or 0) .. "\n"
    end
    return concat(out)
end

return _M
