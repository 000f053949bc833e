-- The configuration of certagent's nginx side: its fields, their defaults and
-- CERTAGENT_* environment variables, and its validation. docs/lua.md
-- describes every field.
local type = type
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local tostring = tostring
local find = string.find
local sub = string.sub
local match = string.match
local format = string.format
local open = io.open
local getenv = os.getenv
local lower = string.lower
local upper = string.upper
local sort = table.sort
local huge = math.huge
local concat = table.concat

local _M = { _VERSION = "0.1.0" }

-- defaults: every field the table accepts.
local defaults = {
    redis_url = "redis://127.0.0.1:6379/0", -- redis://[[user]:password@]host[:port][/db] or unix:/path[?db=N]
    redis_username = nil,       -- overrides the URL's user (Redis 6 ACL)
    redis_password = nil,       -- overrides the URL's password
    key_prefix = "certagent:",  -- must match the agent's --key-prefix
    connect_timeout = 100,      -- ms to connect to Redis
    read_timeout = 200,         -- ms to send a command and read its reply
    keepalive_pool_size = 32,   -- idle Redis connections kept per worker
    keepalive_idle = 60000,     -- ms an idle connection stays in the pool
    request_window = 60,        -- s: a missing name is appended to the stream at most once per window per node
    stream_maxlen = 10000,      -- approximate length cap of the requests stream (XADD MAXLEN ~)
    node = nil,                 -- this node's name in stream entries; default: the host name
    request_rate = 50,          -- names appended to the requests stream per second per node, sustained
    request_burst = 500,        -- names appended at once before request_rate applies
    lru_size = 2000,            -- parsed certificates cached per worker (about 13 KB each)
    cache_ttl = 3600,           -- s a cached certificate is served before Redis is asked again
    negative_ttl = 5,           -- s a record found missing in Redis is remembered as missing
    changes_interval = 1,       -- s between two reads of the changes stream by the node (one worker)
    error_ttl = 5,              -- s an unusable record (corrupt PEM) is remembered, to log it once
    name_index = true,          -- keep every record name in names_dict, for floods of unknown names
    index_threshold = 20,       -- handshakes per second per node for names without a certificate
                                -- from which the index answers
    names_dict = "certagent_names",       -- lua_shared_dict: the names Redis has a certificate for
    certs_dict = "certagent_certs",       -- lua_shared_dict: certificates shared by the workers
    requests_dict = "certagent_requests", -- lua_shared_dict: stream dedup, rate counter, missing records
    stats_dict = "certagent_stats",       -- lua_shared_dict: the counters of the status location
    http_missing = "pass",      -- port 80, name without a certificate: "pass" (your own handling) or "503"
    http_retry_after = 30,      -- s: the Retry-After of http_missing = "503"
    http_redirect = false,      -- port 80, name with a certificate: 308 to https:// when true
    first_handshake_wait = 4,   -- s a first handshake may be held while the agent issues its certificate; 0: never
    first_handshake_grace = 0.25, -- s it is held for the agent's issuing mark to appear
    first_handshake_max_waiting = 64, -- handshakes (and port-80 requests) held at once per worker
    reload_warm = 1,            -- s nginx's master spends at a reload parsing the shared dict's certificates
                                -- into the new workers' cache; 0: never
}
_M.defaults = defaults

-- The fields without a default (a nil in the table above is no entry).
local optional = { redis_username = "string", redis_password = "string", node = "string" }

-- ENV_PREFIX + the field's name in capitals is the environment variable that
-- sets a field: CERTAGENT_REDIS_URL, CERTAGENT_LRU_SIZE, ...
local ENV_PREFIX = "CERTAGENT_"

local function field_type(field)
    local d = defaults[field]
    if d ~= nil then
        return type(d)
    end
    return optional[field]
end

-- fields returns the name of every field init accepts, sorted.
function _M.fields()
    local out = {}
    for k in pairs(defaults) do
        out[#out + 1] = k
    end
    for k in pairs(optional) do
        out[#out + 1] = k
    end
    sort(out)
    return out
end

-- env_name returns the environment variable of a field.
function _M.env_name(field)
    return ENV_PREFIX .. upper(field)
end

local booleans = { ["true"] = true, ["1"] = true, yes = true, on = true,
                   ["false"] = false, ["0"] = false, no = false, off = false }

-- from_env converts the text of a field's environment variable to the
-- field's type, or returns nil and an error.
local function from_env(field, text)
    local t = field_type(field)
    if t == "number" then
        local n = tonumber(text)
        if not n or n ~= n or n == huge or n == -huge then
            return nil, format("must be a number, got %q", text)
        end
        return n
    elseif t == "boolean" then
        local b = booleans[lower(text)]
        if b == nil then
            return nil, format("must be true or false, got %q", text)
        end
        return b
    end
    return text
end

local function positive_number(cfg, field)
    local v = cfg[field]
    if type(v) ~= "number" or v ~= v or v <= 0 then
        return format("%s must be a positive number, got %s", field, tostring(v))
    end
end

-- seconds_off_or_upto returns why cfg[field] is not a number of seconds from
-- 0 (off) to most, or nil.
local function seconds_off_or_upto(cfg, field, most)
    local v = cfg[field]
    if type(v) ~= "number" or v < 0 or v > most then
        return format("%s must be a number of seconds from 0 (off) to %d, got %s", field, most, tostring(v))
    end
end

local function hostname()
    local f = open("/proc/sys/kernel/hostname", "r")
    if f then
        local name = f:read("*l")
        f:close()
        if name and name ~= "" then
            return name
        end
    end
    return getenv("HOSTNAME") or "unknown"
end

local function unescape(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- parse_redis_url returns { host, port, path, db, username, password } or nil, err.
function _M.parse_redis_url(url)
    if type(url) ~= "string" or url == "" then
        return nil, "redis_url must be a non-empty string"
    end
    local r = { db = 0 }
    if sub(url, 1, 5) == "unix:" then
        local rest = sub(url, 6)
        rest = rest:gsub("^//", "")
        local path, query = match(rest, "^([^?]+)%??(.*)$")
        if not path or sub(path, 1, 1) ~= "/" then
            return nil, "redis_url " .. url .. ": a unix socket needs an absolute path (unix:/run/redis.sock)"
        end
        r.path = path
        if query ~= "" then
            for k, v in query:gmatch("([^&=]+)=([^&]*)") do
                if k == "db" then
                    r.db = tonumber(v)
                elseif k == "password" then
                    r.password = unescape(v)
                elseif k == "username" then
                    r.username = unescape(v)
                else
                    return nil, "redis_url: unknown parameter " .. k
                end
            end
        end
    else
        local rest = match(url, "^redis://(.*)$")
        if not rest then
            return nil, "redis_url " .. url .. ": must start with redis:// or unix: (rediss:// is not supported)"
        end
        local userinfo, hostpart = match(rest, "^(.*)@([^@]*)$")
        if not userinfo then
            hostpart = rest
        else
            local user, pass = match(userinfo, "^([^:]*):(.*)$")
            if user then
                r.username = user ~= "" and unescape(user) or nil
                r.password = unescape(pass)
            else
                r.password = unescape(userinfo)
            end
        end
        local hostport, db = match(hostpart, "^([^/]*)/?(.*)$")
        if db ~= "" then
            r.db = tonumber(db)
        end
        local host, port
        if sub(hostport, 1, 1) == "[" then
            host, port = match(hostport, "^%[([^%]]+)%]:?(%d*)$")
        else
            host, port = match(hostport, "^([^:]*):?(%d*)$")
        end
        if not host or host == "" then
            return nil, "redis_url: no host in " .. url
        end
        r.host = host
        r.port = port ~= "" and tonumber(port) or 6379
        if r.port < 1 or r.port > 65535 then
            return nil, "redis_url: bad port in " .. url
        end
    end
    if not r.db or r.db < 0 or r.db ~= math.floor(r.db) then
        return nil, "redis_url: the database must be a non-negative integer"
    end
    return r
end

-- validate checks a complete configuration (defaults filled in) and adds
-- what is derived from it. On failure it returns nil, the error and the
-- field (or list of fields) at fault.
local function validate(cfg)
    local redis, err = _M.parse_redis_url(cfg.redis_url)
    if not redis then
        return nil, err, "redis_url"
    end
    if cfg.redis_username ~= nil then
        redis.username = tostring(cfg.redis_username)
    end
    if cfg.redis_password ~= nil and cfg.redis_password ~= "" then
        redis.password = tostring(cfg.redis_password)
    end
    cfg.redis = redis

    if type(cfg.key_prefix) ~= "string" or find(cfg.key_prefix, "[%s]") then
        return nil, "key_prefix must be a string without spaces", "key_prefix"
    end
    for _, field in ipairs({ "connect_timeout", "read_timeout", "keepalive_pool_size", "keepalive_idle",
                             "request_window", "stream_maxlen", "request_rate", "request_burst", "index_threshold",
                             "lru_size", "cache_ttl",
                             "negative_ttl", "changes_interval", "error_ttl", "http_retry_after",
                             "first_handshake_grace", "first_handshake_max_waiting" }) do
        local e = positive_number(cfg, field)
        if e then
            return nil, e, field
        end
    end
    for _, field in ipairs({ "certs_dict", "requests_dict", "names_dict", "stats_dict" }) do
        if type(cfg[field]) ~= "string" or cfg[field] == "" then
            return nil, field .. " must name a lua_shared_dict", field
        end
    end
    -- Flood names must not evict certificates, nor anything evict the index:
    -- each needs its own memory.
    if cfg.certs_dict == cfg.requests_dict or cfg.names_dict == cfg.certs_dict
        or cfg.names_dict == cfg.requests_dict then
        return nil, "certs_dict, requests_dict and names_dict must be different lua_shared_dicts",
               { "certs_dict", "requests_dict", "names_dict" }
    end
    -- A full dict evicts: the counters must not share one with data that
    -- grows with traffic.
    if cfg.stats_dict == cfg.certs_dict or cfg.stats_dict == cfg.requests_dict
        or cfg.stats_dict == cfg.names_dict then
        return nil, "stats_dict must differ from certs_dict, requests_dict and names_dict",
               { "stats_dict", "certs_dict", "requests_dict", "names_dict" }
    end
    if cfg.http_missing ~= "pass" and cfg.http_missing ~= "503" then
        return nil, "http_missing must be \"pass\" or \"503\"", "http_missing"
    end
    if type(cfg.http_redirect) ~= "boolean" then
        return nil, "http_redirect must be true or false", "http_redirect"
    end
    if type(cfg.name_index) ~= "boolean" then
        return nil, "name_index must be true or false", "name_index"
    end
    if cfg.lru_size ~= math.floor(cfg.lru_size) then
        return nil, "lru_size must be a whole number", "lru_size"
    end
    -- The agent's issuing mark lives 60 s: a longer hold could outlast it.
    -- The master parses while the old workers serve, but nginx's reload
    -- (and its new workers) waits for it; and the changes log keeps its
    -- events 10 s: a longer parse would have its workers drop what it
    -- parsed whenever something changed meanwhile.
    for _, bound in ipairs({ { "first_handshake_wait", 60 }, { "reload_warm", 5 } }) do
        local e = seconds_off_or_upto(cfg, bound[1], bound[2])
        if e then
            return nil, e, bound[1]
        end
    end
    if cfg.first_handshake_max_waiting ~= math.floor(cfg.first_handshake_max_waiting) then
        return nil, "first_handshake_max_waiting must be a whole number", "first_handshake_max_waiting"
    end
    if cfg.node == nil or cfg.node == "" then
        cfg.node = hostname()
    end
    if type(cfg.node) ~= "string" then
        return nil, "node must be a string", "node"
    end
    return cfg
end

-- named_by returns the environment variables among those of fields that
-- gave a value, for an error message ("" when none did).
local function named_by(fields, origin)
    if type(fields) ~= "table" then
        fields = { fields }
    end
    local vars = {}
    for _, f in ipairs(fields) do
        if origin[f] then
            vars[#vars + 1] = origin[f]
        end
    end
    if #vars == 0 then
        return ""
    end
    return concat(vars, ", ") .. ": "
end

-- new(user, env) returns the complete configuration or nil and an error
-- naming the field, and the environment variable when the value came from
-- one. Each field is taken from the table user when it has it, else from its
-- environment variable (env_name) when that is set and not empty, else from
-- the defaults: init() with no table is configured by the environment alone.
-- env looks a variable up (default os.getenv; tests pass their own).
function _M.new(user, env)
    user = user or {}
    if type(user) ~= "table" then
        return nil, "the configuration must be a table"
    end
    env = env or getenv
    local cfg, origin = {}, {}
    for k, v in pairs(defaults) do
        cfg[k] = v
    end
    for _, field in ipairs(_M.fields()) do
        local var = _M.env_name(field)
        local text = user[field] == nil and env(var)
        if text and text ~= "" then
            local v, err = from_env(field, text)
            if v == nil then
                return nil, var .. ": " .. field .. " " .. err
            end
            cfg[field], origin[field] = v, var
        end
    end
    for k, v in pairs(user) do
        if field_type(k) == nil then
            return nil, "unknown configuration field " .. tostring(k)
        end
        cfg[k] = v
    end
    local ok, err, fields = validate(cfg)
    if not ok then
        return nil, named_by(fields, origin) .. err
    end
    return cfg
end

return _M
