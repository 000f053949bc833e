-- Counters of certagent's nginx side, kept in a lua_shared_dict (stats_dict)
-- so that every worker adds to the same numbers (and two gauges per worker:
-- the handshakes held by the first-handshake wait), and
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
    { "waits", "certagent_nginx_waits_total", "" },
    { "wait_certificate", "certagent_nginx_wait_results_total", '{result="certificate"}' },
    { "wait_refused", "certagent_nginx_wait_results_total", '{result="refused"}' },
    { "wait_grace", "certagent_nginx_wait_results_total", '{result="grace"}' },
    { "wait_deadline", "certagent_nginx_wait_results_total", '{result="deadline"}' },
    { "wait_error", "certagent_nginx_wait_results_total", '{result="error"}' },
    { "wait_no_agent", "certagent_nginx_waits_skipped_total", '{reason="no_agent"}' },
    { "judged_no_rule", "certagent_nginx_judged_total", '{reason="no_rule"}' },
    { "judged_refused", "certagent_nginx_judged_total", '{reason="refused"}' },
    { "wait_turned_away", "certagent_nginx_waits_turned_away_total", "" },
    { "wait_pollers", "certagent_nginx_wait_pollers_total", "" },
    { "wait_polls", "certagent_nginx_wait_polls_total", "" },
}

-- Gauges kept per worker (key prefix in the dict, then ":<worker id>"):
-- metric name, key prefix.
local gauges = {
    { "certagent_nginx_waiting", "waiting" },
    { "certagent_nginx_waiting_highest", "waiting_highest" },
}

local help = {
    certagent_nginx_certificates_served_total =
        "TLS handshakes answered with a stored certificate, by where it was found (stale: the cache during a " ..
            "Redis error).",
    certagent_nginx_misses_total = "TLS handshakes for a name without a certificate.",
    certagent_nginx_fallback_total =
        "TLS handshakes answered with the server's own (fallback) certificate, for any reason.",
    certagent_nginx_names_recorded_total = "Names appended to the requests stream.",
    certagent_nginx_redis_errors_total =
        "Failed Redis round trips: certificate lookups, stream appends, challenge lookups, changes stream reads.",
    certagent_nginx_challenges_total = "HTTP-01 challenge requests, by whether Redis held the token.",
    certagent_nginx_waits_total =
        "TLS handshakes (and port-80 requests) held while the agent issues their name's certificate.",
    certagent_nginx_wait_results_total =
        "Held handshakes and requests by how the wait ended: certificate, refused, grace (no issuing mark), " ..
            "deadline, error.",
    certagent_nginx_waits_skipped_total =
        "Handshakes and requests that would have been held, served at once because no agent's heartbeat counts.",
    certagent_nginx_judged_total =
        "Handshakes and requests for a name without a certificate neither recorded nor held, judged in nginx: " ..
            "no published rule can allow the name, or an agent refused it a moment ago.",
    certagent_nginx_waits_turned_away_total =
        "Handshakes and requests not held because first_handshake_max_waiting were already held in their worker.",
    certagent_nginx_wait_pollers_total =
        "Waits that polled Redis: one per name per worker, however many handshakes share it.",
    certagent_nginx_wait_polls_total =
        "Redis round trips of waiting handshakes (issuing mark and certificate records).",
    certagent_nginx_waiting = "Handshakes and requests held right now, per worker.",
    certagent_nginx_waiting_highest = "The most handshakes and requests held at once, per worker, since nginx started.",
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

-- set sets the gauge key (a key prefix of the gauges table) of worker id to
-- value; raise sets it only when value is higher.
function _M.set(key, id, value)
    local dict = dict_name and shared[dict_name]
    if dict then
        dict:set(key .. ":" .. id, value)
    end
end

function _M.raise(key, id, value)
    local dict = dict_name and shared[dict_name]
    if dict and value > (dict:get(key .. ":" .. id) or 0) then
        dict:set(key .. ":" .. id, value)
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
    local workers = ngx.worker.count()
    for i = 1, #gauges do
        local metric, key = gauges[i][1], gauges[i][2]
        n = n + 1
        out[n] = "# HELP " .. metric .. " " .. help[metric] .. "\n# TYPE " .. metric .. " gauge\n"
        for id = 0, workers - 1 do
            n = n + 1
            out[n] = metric .. '{worker="' .. id .. '"} ' .. tostring(dict:get(key .. ":" .. id) or 0) .. "\n"
        end
    end
    return concat(out)
end

return _M
