-- Redis connections for certagent: lua-resty-redis (OpenResty: resty.redis,
-- Debian: nginx.redis), with timeouts, AUTH/SELECT on new connections only and
-- the cosocket keepalive pool. Never holds a connection at module level.
local pcall = pcall
local ipairs = ipairs
local rawget = rawget
local require = require
local tostring = tostring
local md5 = ngx.md5

local _M = { _VERSION = "0.1.0" }

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

-- connect returns a ready connection (authenticated, database selected) or nil, err.
function _M.connect(cfg)
    if not client then
        return nil, "neither resty.redis nor nginx.redis is installed"
    end
    local r = cfg.redis
    local red, err = client:new()
    if not red then
        return nil, err
    end
    -- rawget: lua-resty-redis turns any unknown method name into a Redis
    -- command, so "red.set_timeouts" is never nil. Before 0.28 (Debian's
    -- nginx.redis is 0.27) only set_timeout exists.
    if has_set_timeouts then
        red:set_timeouts(cfg.connect_timeout, cfg.read_timeout, cfg.read_timeout)
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
        return nil, "connecting to Redis at " .. describe(r) .. ": " .. tostring(err)
    end
    if not has_set_timeouts then
        red:set_timeout(cfg.read_timeout)
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
                red:close()
                return nil, "Redis at " .. describe(r) .. ": AUTH failed: " .. tostring(err)
            end
        end
        if r.db ~= 0 then
            local res
            res, err = red:select(r.db)
            if not res then
                red:close()
                return nil, "Redis at " .. describe(r) .. ": SELECT failed: " .. tostring(err)
            end
        end
    end
    return red
end

-- release puts a healthy connection back into the pool.
function _M.release(cfg, red)
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
