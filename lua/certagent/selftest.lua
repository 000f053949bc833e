-- Checks once per start that this nginx lets ssl_certificate_by_lua yield.
--
-- certagent's handshake handler yields whenever it asks Redis (a cosocket)
-- or holds a first handshake (ngx.sleep, a semaphore). A stock nginx core
-- cannot resume a certificate callback that yielded: it aborts the handshake,
-- and its only trace is an info-level "peer closed connection in SSL
-- handshake". OpenResty's nginx and Debian's carry the core change that
-- allows it (OpenResty's ssl_cert_cb_yield patch); a self-built nginx with
-- lua-nginx-module added does not.
--
-- The check is a TLS handshake of nginx's own (its ClientHello) to the
-- listener of the first handshake a worker sees (nginx tells a worker
-- nothing of its listeners before that, and probing them all would send TLS
-- to the fleet's plain HTTP and stream ports). Its SNI is NAME; the handler
-- sleeps for it (answer), and a handshake that reached the handler and then
-- ended without the handler resuming means the core cannot yield: one error
-- names the fix. A core that can yield logs one info line.
local ngx = ngx
local ngx_ssl = require("ngx.ssl")

local log = ngx.log
local ERR = ngx.ERR
local INFO = ngx.INFO
local shared = ngx.shared
local sleep = ngx.sleep
local tcp = ngx.socket.tcp
local timer_at = ngx.timer.at
local byte = string.byte
local char = string.char
local rep = string.rep
local format = string.format
local concat = table.concat
local floor = math.floor
local pcall = pcall
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

-- NAME is the self-test's SNI. names.normalize refuses it (an underscore), so
-- no visitor's name takes the self-test's path, and ssl.lua looks for it only
-- where it already turns such names away.
_M.NAME = "certagent_selftest.invalid"

-- The self-test's state, in the requests dict (no name has a colon): RUN
-- while it runs or once it has run (shared dicts outlive a reload, so a
-- reload does not repeat it), REACHED and RESUMED set by the handler before
-- and after its yield.
local RUN = "selftest:run"
local REACHED = "selftest:reached"
local RESUMED = "selftest:resumed"

-- A handshake slower than this says nothing about yielding.
local TIMEOUT = 10000 -- ms

_M.MESSAGE = "certagent: this nginx cannot yield in ssl_certificate_by_lua: its core lacks OpenResty's "
    .. "ssl_cert_cb_yield change, so every TLS handshake that has to ask Redis is aborted (logged only as "
    .. "\"peer closed connection in SSL handshake\" at info level); run OpenResty's nginx or Debian's "
    .. "(nginx-extras or libnginx-mod-http-lua), or build nginx with that change (docs/lua.md, "
    .. "\"An nginx that can yield\")"

-- pending is true in a worker until its first handshake (see start).
_M.pending = false

-- init_worker arms the check in this worker, unless it ran since the shared
-- dicts were created.
function _M.init_worker(cfg)
    local dict = shared[cfg.requests_dict]
    _M.pending = dict ~= nil and not dict:get(RUN)
end

-- where returns the cosocket address of the listener of the current
-- handshake, and how to name it in the log.
local function where()
    local addr, kind = ngx_ssl.raw_server_addr()
    if not addr then
        return nil, kind
    end
    if kind == "unix" then
        return { "unix:" .. addr }, "unix:" .. addr
    end
    local port, err = ngx_ssl.server_port()
    if not port then
        return nil, err
    end
    local host
    if kind == "inet" then
        host = format("%d.%d.%d.%d", byte(addr, 1, 4))
    else
        host = format("[%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x]", byte(addr, 1, 16))
    end
    return { host, port }, host .. ":" .. port
end

-- The self-test's ClientHello is written here rather than by a cosocket's
-- sslhandshake, whose failure nginx logs as an error of its own: TLS 1.3
-- and 1.2, the usual cipher suites, groups and signature algorithms, so any
-- listener's settings accept it as far as the certificate callback.
local function u16(n)
    return char(floor(n / 256), n % 256)
end

local function vec8(s)
    return char(#s) .. s
end

local function vec16(s)
    return u16(#s) .. s
end

local function extension(kind, body)
    return u16(kind) .. vec16(body)
end

-- An X25519 public key (RFC 7748, 6.1): the handshake never gets as far as
-- using it.
local KEY_SHARE = "\133\032\240\009\137\048\167\084\116\139\125\220\180\062\247\090"
    .. "\013\191\058\013\038\056\026\244\235\164\169\142\170\155\078\106"

local function client_hello(name)
    local suites = { 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0x009c }
    local groups = { 0x001d, 0x0017, 0x0018 }
    local sigalgs = { 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0807 }
    local function list(codes)
        local out = {}
        for i = 1, #codes do
            out[i] = u16(codes[i])
        end
        return concat(out)
    end
    local extensions = extension(0, vec16("\0" .. vec16(name)))   -- server_name
        .. extension(10, vec16(list(groups)))                      -- supported_groups
        .. extension(11, vec8("\0"))                               -- ec_point_formats
        .. extension(13, vec16(list(sigalgs)))                     -- signature_algorithms
        .. extension(43, vec8(list({ 0x0304, 0x0303 })))           -- supported_versions
        .. extension(51, vec16(u16(0x001d) .. vec16(KEY_SHARE)))   -- key_share
    local body = "\3\3" .. rep("\42", 32) .. vec8(rep("\7", 32)) .. vec16(list(suites)) .. "\1\0"
        .. vec16(extensions)
    local handshake = "\1\0" .. u16(#body) .. body               -- ClientHello
    return "\22\3\1" .. u16(#handshake) .. handshake              -- a handshake record
end

-- attempt sends preamble and the ClientHello to target and tells what the
-- handler saw of it.
local function attempt(dict, target, label, preamble)
    dict:delete(REACHED)
    dict:delete(RESUMED)
    local sock = tcp()
    sock:settimeouts(TIMEOUT, TIMEOUT, TIMEOUT)
    local ok, err = sock:connect(target[1], target[2])
    if not ok then
        return "inconclusive", "connecting to " .. label .. ": " .. tostring(err)
    end
    ok, err = sock:send(preamble .. client_hello(_M.NAME))
    if ok then
        -- The server's first record: its hello once the certificate
        -- callback returned, or an alert, or nothing (closed).
        local _
        _, err = sock:receive(5)
    end
    sock:close()
    if not dict:get(REACHED) then
        -- Another server answered (the listener's default server does not
        -- include certagent-tls.conf), or the PROXY header was wrong.
        return "unreached", "the handshake to " .. label .. " did not reach certagent's handler"
    end
    if dict:get(RESUMED) then
        return "yields"
    end
    if err == "timeout" then
        return "inconclusive", "the handshake to " .. label .. " timed out"
    end
    return "cannot yield"
end

-- The listener may expect a PROXY protocol header (behind a load balancer),
-- which nothing in the handshake phase tells. Sent to one that does not, the
-- header fails the handshake with an info line ("wrong version number");
-- missing where one is expected, it is an error ("broken header"). So the
-- header first, then without it.
local PREAMBLES = { "PROXY UNKNOWN\r\n", "" }

local function check(dict, target, label)
    local verdict, why
    for i = 1, #PREAMBLES do
        verdict, why = attempt(dict, target, label, PREAMBLES[i])
        if verdict ~= "unreached" then
            break
        end
    end
    return verdict, why
end

local function run(premature, dict_name, target, label)
    local dict = shared[dict_name]
    if premature then
        dict:delete(RUN) -- the next start checks
        return
    end
    local ok, verdict, why = pcall(check, dict, target, label)
    if not ok then
        verdict, why = "inconclusive", verdict
    end
    if verdict == "cannot yield" then
        log(ERR, _M.MESSAGE)
    elseif verdict == "yields" then
        log(INFO, "certagent: ssl_certificate_by_lua can yield in this nginx (self-test on ", label, ")")
    else
        log(INFO, "certagent: could not check that ssl_certificate_by_lua can yield: ", why)
        if verdict == "unreached" then
            dict:delete(RUN) -- another worker's first handshake may come through a listener that reaches it
        end
    end
end

-- start runs in the first handshake of a worker while pending: it schedules
-- the self-test against this handshake's listener, unless another worker
-- runs it or ran it.
function _M.start(cfg)
    _M.pending = false
    local dict = shared[cfg.requests_dict]
    if not dict:add(RUN, true) then
        return
    end
    local target, label = where()
    if not target then
        dict:delete(RUN)
        log(INFO, "certagent: could not check that ssl_certificate_by_lua can yield: ", label)
        return
    end
    local ok, err = timer_at(0, run, cfg.requests_dict, target, label)
    if not ok then
        dict:delete(RUN)
        log(INFO, "certagent: could not check that ssl_certificate_by_lua can yield: ", err)
    end
end

-- answer is the handler's part for the SNI NAME: it yields, which a core
-- without the change cannot resume. It returns true so that the self-test's
-- handshake is not counted as a visitor's fallback.
function _M.answer(cfg)
    local dict = shared[cfg.requests_dict]
    dict:set(REACHED, true)
    sleep(0.001)
    dict:set(RESUMED, true)
    return true
end

return _M
