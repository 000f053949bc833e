-- Redis connections for certagent: lua-resty-redis (OpenResty: resty.redis,
-- Debian: nginx.redis), with timeouts, AUTH/SELECT on new connections only and
-- the cosocket keepalive pool. Never holds a connection at module level.
--
-- While Redis cannot be reached, a worker tries it at most once a second
-- for handshakes and requests (REQUEST_RETRY: a Redis that is back is
-- noticed within it), and for its timers (the changes poll, the requests
-- stream, the name index) at intervals from RETRY_FIRST doubling to
-- RETRY_MAX. Every other caller gets an error at once, without a socket, so
-- an outage costs neither a connect timeout per handshake nor a socket
-- error line per attempt (nginx logs one for every failed cosocket unless
-- lua_socket_log_errors is off, which is the installation's to choose).
-- certagent logs one line when Redis becomes unreachable and one when it
-- answers again; callers log their own Redis errors only when down() is
-- false.
local pcall = pcall
local ipairs = ipairs
local rawget = rawget
local require = require
local tostring = tostring
local floor = math.floor
local max = math.max
local min = math.min
local md5 = ngx.md5
local get_phase = ngx.get_phase
local now = ngx.now
local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN

local _M = { _VERSION = "0.1.0" }

local REQUEST_RETRY = 1 -- s between two tries of handshakes and requests
local RETRY_FIRST = 1   -- s from the first failure to the timers' next try
local RETRY_MAX = 30    -- s between two tries of the timers at most
-- ms a timer's command may take to be answered, at least. read_timeout is
-- what a visitor's handshake may wait; a timer (the changes poll, the
-- requests stream, the name index) keeps no visitor waiting, and its
-- timeout starts an outage for every handshake of the worker: a Redis that
-- stalls for a few hundred milliseconds (a fork for a snapshot, a slow
-- command, a busy host) is not unreachable.
local TIMER_READ_TIMEOUT = 1000

-- This worker's outage: nil while Redis answers, else { since, skipped,
-- request_at, timer_at, delay }: when a handshake or request may try next,
-- when a timer may, and the timers' current delay.
local outage

-- OpenResty ships lua-resty-redis as resty.redis, Debian as nginx.redis (the
-- same library); the first one found is used and named in client_name.
local client
for _, module_name in ipairs({ "resty.redis", "nginx.redis" }) do
    local ok, mod = pcall(require, module_name)
    if ok then
        client = mod
        _M.client_name = module_name
        break
    end
end

local has_set_timeouts = client ~= nil and rawget(client, "set_timeouts") ~= nil

-- available reports whether a Redis client library was found.
function _M.available()
    return client ~= nil, "neither resty.redis nor nginx.redis is installed"
end

local function describe(r)
    if r.path then
        return "unix:" .. r.path
    end
    return r.host .. ":" .. tostring(r.port)
end
_M.describe = describe

-- pool_name keeps connections to different servers, databases and users apart.
function _M.pool_name(r)
    local who = ""
    if r.password then
        who = md5((r.username or "") .. ":" .. r.password)
    end
    return "certagent:" .. describe(r) .. "/" .. r.db .. ":" .. who
end

-- down reports whether this worker holds Redis for unreachable: its last
-- try failed (the outage is logged once) and it has not answered since.
function _M.down()
    return outage ~= nil
end

-- failed notes a try that got no answer (no connection, a socket error or
-- timeout): the first one starts an outage and logs it; later ones put off
-- the next try of their kind, a timer's for twice as long as before.
local function failed(cfg, err)
    local t = now()
    if not outage then
        outage = { since = t, skipped = 0, request_at = t + REQUEST_RETRY, timer_at = t + RETRY_FIRST,
                   delay = RETRY_FIRST }
        log(ERR, "certagent: Redis at ", describe(cfg.redis), " cannot be reached (", tostring(err),
            "); serving cached certificates and the fallback, trying it again at most every ", REQUEST_RETRY,
            " s (the timers at intervals growing to ", RETRY_MAX, " s)")
    elseif get_phase() == "timer" then
        outage.delay = min(outage.delay * 2, RETRY_MAX)
        outage.timer_at = t + outage.delay
    else
        outage.request_at = t + REQUEST_RETRY
    end
end

-- answered ends the outage: a command got its reply.
local function answered(cfg)
    if outage then
        log(WARN, "certagent: Redis at ", describe(cfg.redis), " answers again after ",
            floor(now() - outage.since + 0.5), " s; ", outage.skipped,
            " uses of it were answered without trying it meanwhile")
        outage = nil
    end
end

-- gate returns an error while the caller's kind (a timer, or a handshake
-- or request) waits for its next try; otherwise the caller makes the try,
-- and the others of its kind keep waiting until it is done.
local function gate(cfg)
    if not outage then
        return nil
    end
    local t = now()
    local timer = get_phase() == "timer"
    local at = timer and outage.timer_at or outage.request_at
    if t < at then
        outage.skipped = outage.skipped + 1
        return "Redis at " .. describe(cfg.redis) .. " is unreachable (for " .. floor(t - outage.since)
            .. " s; next try in " .. (floor((at - t) * 10 + 0.5) / 10) .. " s)"
    end
    if timer then
        outage.timer_at = t + outage.delay
    else
        outage.request_at = t + REQUEST_RETRY
    end
    return nil
end

-- drop closes a connection after a failed command, res being what the
-- command returned: nil (no reply: a timeout, a connection closed or reset)
-- counts as unreachable, as a failed connect does; false (an error reply: a
-- refused command, a wrong password, a wrong type) is an answer, which ends
-- an outage so that callers log it.
local function drop(cfg, red, res, err)
    red:close()
    if res == nil then
        failed(cfg, err)
    else
        answered(cfg)
    end
end
_M.drop = drop

-- connect returns a ready connection (authenticated, database selected) or
-- nil, err. ungated tries Redis even during an outage: for the CA's
-- validation requests, rare and each worth an order, which a 503 would fail
-- (Redis back a moment ago, not yet seen answering by this worker).
function _M.connect(cfg, ungated)
    if not client then
        return nil, "neither resty.redis nor nginx.redis is installed"
    end
    local waiting = not ungated and gate(cfg)
    if waiting then
        return nil, waiting
    end
    local r = cfg.redis
    local red, err = client:new()
    if not red then
        return nil, err
    end
    -- rawget: lua-resty-redis turns any unknown method name into a Redis
    -- command, so "red.set_timeouts" is never nil. Before 0.28 (Debian's
    -- nginx.redis is 0.27) only set_timeout exists.
    local read_timeout = cfg.read_timeout
    if get_phase() == "timer" then
        read_timeout = max(read_timeout, TIMER_READ_TIMEOUT)
    end
    if has_set_timeouts then
        red:set_timeouts(cfg.connect_timeout, read_timeout, read_timeout)
    else
        red:set_timeout(cfg.connect_timeout)
    end

    local ok
    local opts = { pool = cfg.redis_pool }
    if r.path then
        ok, err = red:connect("unix:" .. r.path, opts)
    else
        ok, err = red:connect(r.host, r.port, opts)
    end
    if not ok then
        err = "connecting to Redis at " .. describe(r) .. ": " .. tostring(err)
        failed(cfg, err)
        return nil, err
    end
    if not has_set_timeouts then
        red:set_timeout(read_timeout)
    end

    local reused = red:get_reused_times()
    if reused == 0 then
        if r.password then
            local res
            if r.username then
                res, err = red:auth(r.username, r.password)
            else
                res, err = red:auth(r.password)
            end
            if not res then
                err = "Redis at " .. describe(r) .. ": AUTH failed: " .. tostring(err)
                drop(cfg, red, res, err)
                return nil, err
            end
        end
        if r.db ~= 0 then
            local res
            res, err = red:select(r.db)
            if not res then
                err = "Redis at " .. describe(r) .. ": SELECT failed: " .. tostring(err)
                drop(cfg, red, res, err)
                return nil, err
            end
        end
    end
    return red
end

-- release puts a healthy connection back into the pool: Redis answered.
function _M.release(cfg, red)
    answered(cfg)
    local ok = red:set_keepalive(cfg.keepalive_idle, cfg.keepalive_pool_size)
    if not ok then
        red:close()
    end
end

-- discard closes a connection that saw an error (its state is unknown).
function _M.discard(red)
    red:close()
end

return _M
