-- The index of record names: every name Redis has a certificate record for,
-- in a shared dict, so that a handshake for a name that has none (a flood of
-- random names, a scanner) is answered without asking Redis.
--
-- It is built by one worker with SCAN MATCH <prefix>cert:* into a Bloom
-- filter sized from the number of names found: blocks of BLOCK_BYTES in the
-- dict, all of a name's bits in one block, so that a lookup reads one
-- block. About 16 bits a name (2.6 bytes with the dict's overhead), a false
-- positive (a name taken as maybe stored, looked up in Redis) for about one
-- name in a thousand; a stored name is never taken as absent. Every name the
-- changes stream lists after the build is kept exactly, as its own key; when
-- those fill the dict, the index is built again, folding them into a new
-- filter. A deleted name stays in the index until the next build (it costs
-- only a lookup). Until a build has finished, and whenever the index may have
-- missed a name (changes trimmed away, a new Redis), it is not used and every
-- unknown name is looked up in Redis as without it. When the filter does not
-- fit, one log line says what size the dict needs.
local ngx = ngx
local ffi = require("ffi")
local bit = require("bit")
local redis = require("certagent.redis")

local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local shared = ngx.shared
local timer_at = ngx.timer.at
local md5_bin = ngx.md5_bin
local tostring = tostring
local sub = string.sub
local gsub = string.gsub
local byte = string.byte
local ceil = math.ceil
local floor = math.floor
local max = math.max
local band = bit.band
local bor = bit.bor
local lshift = bit.lshift
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_copy = ffi.copy
local pcall = pcall

local _M = { _VERSION = "0.2.0" }

-- Keys of the dict that are not names start with "!", which no name does.
local READY = "!ready"       -- the generation whose build finished
local GENERATION = "!gen"    -- bumped whenever the index may be incomplete
local BUILDING = "!building" -- the lock of the one worker that builds
local FULL = "!full"         -- until when not to build again: the dict was too small
local BLOCKS = "!blocks"     -- how many blocks the filter has
local TOLD = "!told"         -- the dict size last said to be needed, so it is said once
local NAMES = "!names"       -- how many names the last build found
local BUILDS = "!builds"     -- how many builds finished since the dict was made
local BLOCK = "!f:"          -- prefix of the filter's blocks
local FULL_PAUSE = 300       -- s
local BUILD_LOCK_TTL = 300   -- s; a worker that died while building frees it
local SCAN_COUNT = 1000

-- The filter's shape. A block of 400 bytes with its key and the dict's node
-- header fills a 512-byte slab of the dict. 16 bits and 11 probes a name
-- give about 0.1% false positives: under a flood of names outside the rules,
-- that is about one Redis lookup in a thousand handshakes (10 bits and 7
-- probes gave 1.35%, more than the background traffic).
local BLOCK_BYTES = 400
local BLOCK_BITS = BLOCK_BYTES * 8
local SLAB_BYTES = 512
local BITS_PER_NAME = 16
local PROBES = 11
-- Room left beside the filter for the names the changes stream adds.
local HEADROOM = 1024 * 1024

local cfg, keys
local overflow_logged = false

function _M.init(config, key_builder)
    cfg = config
    keys = key_builder
    if cfg.name_index then
        local d = shared[cfg.names_dict]
        if not d then
            return nil, "lua_shared_dict " .. cfg.names_dict .. " (names_dict) is not defined"
        end
        -- Created now, while there is room: marking the dict full later
        -- must not need memory.
        d:set(FULL, 0)
    end
    return true
end

local function dict()
    return shared[cfg.names_dict]
end

-- usable reports whether the index holds every record name.
local function usable(d)
    local ready = d:get(READY)
    return ready ~= nil and ready == d:get(GENERATION)
end

-- ready reports whether the index is in use (enabled and complete).
function _M.ready()
    return cfg.name_index and usable(dict())
end

local function u32(s, i)
    local a, b, c, e = byte(s, i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + e
end

-- hashes returns three independent 32-bit numbers of rec: one chooses the
-- block, two make its probes (double hashing).
local function hashes(rec)
    local h = md5_bin(rec)
    return u32(h, 1), u32(h, 5), u32(h, 9)
end

-- in_filter reports whether every probe bit of rec is set in its block of
-- the filter's blocks (the dict's BLOCKS).
local function in_filter(d, blocks, rec)
    if not blocks or blocks == 0 then
        return false
    end
    local h, a, b = hashes(rec)
    local block = d:get(BLOCK .. (h % blocks))
    if not block then
        return false
    end
    for i = 0, PROBES - 1 do
        local pos = (a + i * b) % BLOCK_BITS
        if band(byte(block, floor(pos / 8) + 1), lshift(1, pos % 8)) == 0 then
            return false
        end
    end
    return true
end

-- absent reports whether the index is usable and rec is not in it: Redis has
-- no record rec (as of the last changes entry this node has read).
function _M.absent(rec)
    if not cfg.name_index then
        return false
    end
    local d = dict()
    return usable(d) and not d:get(rec) and not in_filter(d, d:get(BLOCKS), rec)
end

-- absent_both is absent(a) and (not b or absent(b)), with the index's state
-- read once: the exact record and the wildcard of a handshake's name.
function _M.absent_both(a, b)
    if not cfg.name_index then
        return false
    end
    local d = dict()
    if not usable(d) or d:get(a) or (b and d:get(b)) then
        return false
    end
    local blocks = d:get(BLOCKS)
    return not in_filter(d, blocks, a) and not (b and in_filter(d, blocks, b))
end

-- invalidate marks the index incomplete; the next poll builds it again.
function _M.invalidate()
    if cfg.name_index then
        dict():incr(GENERATION, 1, 0)
    end
end

-- clear deletes every name and block, keeping the index's own state: the
-- build that follows holds them all.
local function clear(d)
    local all = d:get_keys(0)
    for i = 1, #all do
        local k = all[i]
        if sub(k, 1, 1) ~= "!" or sub(k, 1, #BLOCK) == BLOCK then
            d:delete(k)
        end
    end
    d:delete(BLOCKS)
end

-- add records that Redis may have a record rec: an exact key beside the
-- filter. When the dict has no room left for it, the index is built again,
-- which folds these keys into a new filter.
function _M.add(rec)
    if not cfg.name_index then
        return
    end
    local d = dict()
    local ok, err = d:safe_set(rec, true)
    if not ok then
        -- Never evict a name: a missing one would hide a certificate.
        -- Out of use now, the index is emptied so that the build has room;
        -- every name it held is in Redis, where the build's SCAN finds it.
        d:incr(GENERATION, 1, 0)
        clear(d)
        if not overflow_logged then
            overflow_logged = true
            log(NOTICE, "certagent: lua_shared_dict ", cfg.names_dict, ": ", err,
                " for the names added since the name index was built; building it again")
        end
    end
end

-- collect SCANs every record name into a growing array of hash triples and
-- returns it with the count, or nil when the build must stop (the error, or
-- nothing when the index was invalidated meanwhile).
local function collect(d, red, generation)
    -- The prefix is the operator's: its glob characters must match literally.
    local pattern = gsub(keys:cert(""), "[%*%?%[%]\\]", "\\%0") .. "*"
    local strip = #keys:cert("") + 1
    local cap, n = 65536, 0
    local hs = ffi_new("uint32_t[?]", cap * 3)
    local cursor = "0"
    repeat
        local reply, err = red:scan(cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
        if not reply then
            return nil, nil, tostring(err), reply
        end
        cursor = reply[1]
        local found = reply[2]
        if n + #found > cap then
            cap = max(cap * 2, n + #found)
            local grown = ffi_new("uint32_t[?]", cap * 3)
            ffi_copy(grown, hs, n * 3 * 4)
            hs = grown
        end
        for i = 1, #found do
            local h, a, b = hashes(sub(found[i], strip))
            hs[n * 3], hs[n * 3 + 1], hs[n * 3 + 2] = h, a, b
            n = n + 1
        end
        if d:get(GENERATION) ~= generation then
            return nil
        end
    until cursor == "0"
    return hs, n
end

-- needed is the dict size, in MB, that a filter of blocks needs with the
-- headroom for added names.
local function needed(blocks)
    return ceil((blocks * SLAB_BYTES + HEADROOM) / (1024 * 1024))
end

-- tell logs, once per size, that the dict is too small for the filter.
local function tell(d, names, blocks)
    local mb = needed(blocks)
    if d:get(TOLD) == mb then
        return
    end
    d:set(TOLD, mb)
    local ok, capacity = pcall(d.capacity, d)
    local has = ok and capacity and (" (it has " .. ceil(capacity / 1024) .. " KB)") or ""
    log(ERR, "certagent: the name index of ", names, " names needs lua_shared_dict ", cfg.names_dict,
        " of at least ", mb, "m", has, "; names without a certificate are looked up in Redis until it is larger")
end

-- fill writes the filter of the n hash triples in hs to the dict and reports
-- whether it fits.
local function fill(d, hs, n, blocks)
    local bytes = blocks * BLOCK_BYTES
    local bits = ffi_new("uint8_t[?]", bytes)
    for j = 0, n - 1 do
        local base = (hs[j * 3] % blocks) * BLOCK_BYTES
        local a, b = hs[j * 3 + 1], hs[j * 3 + 2]
        for i = 0, PROBES - 1 do
            local pos = (a + i * b) % BLOCK_BITS
            local at = base + floor(pos / 8)
            bits[at] = bor(bits[at], lshift(1, pos % 8))
        end
    end
    for i = 0, blocks - 1 do
        if not d:safe_set(BLOCK .. i, ffi_string(bits + i * BLOCK_BYTES, BLOCK_BYTES)) then
            return false
        end
    end
    d:set(BLOCKS, blocks)
    return true
end

local function build(premature, generation)
    local d = dict()
    if premature then
        d:delete(BUILDING)
        return
    end
    local red, err = redis.connect(cfg)
    if not red then
        d:delete(BUILDING)
        log(WARN, "certagent: building the name index: ", err)
        return
    end
    clear(d)
    local hs, n, reply
    hs, n, err, reply = collect(d, red, generation)
    if err then
        redis.drop(cfg, red, reply, err)
        d:delete(BUILDING)
        log(WARN, "certagent: building the name index: ", err)
        return
    end
    redis.release(cfg, red)
    if not hs then
        -- The index was invalidated meanwhile: start over on the next poll.
        d:delete(BUILDING)
        return
    end
    local blocks = max(1, ceil(n * BITS_PER_NAME / BLOCK_BITS))
    if not fill(d, hs, n, blocks) then
        clear(d)
        d:set(FULL, ngx.time() + FULL_PAUSE)
        d:delete(BUILDING)
        tell(d, n, blocks)
        return
    end
    d:set(NAMES, n)
    d:incr(BUILDS, 1, 0)
    d:set(READY, generation)
    d:delete(BUILDING)
    -- Routine, at every start: below the warn and error levels error_log keeps.
    log(NOTICE, "certagent: name index built: ", n, " records in ", blocks * BLOCK_BYTES, " bytes")
end

-- stats describes the index, for tests and operators: whether it is in
-- use, the names its last build found, and how many builds finished.
function _M.stats()
    if not cfg.name_index then
        return { ready = false, names = 0, builds = 0 }
    end
    local d = dict()
    return { ready = usable(d), names = d:get(NAMES) or 0, builds = d:get(BUILDS) or 0 }
end

-- maintain starts a build when the index is not usable and no worker is
-- building it. The changes poll calls it once this worker follows the
-- stream: what the build's SCAN misses was written after, and the stream
-- brings it.
function _M.maintain()
    if not cfg.name_index then
        return
    end
    local d = dict()
    if usable(d) or (d:get(FULL) or 0) > ngx.time() then
        return
    end
    local generation = d:get(GENERATION)
    if not generation then
        d:add(GENERATION, 1)
        generation = d:get(GENERATION)
    end
    if not d:add(BUILDING, true, BUILD_LOCK_TTL) then
        return
    end
    local ok, err = timer_at(0, build, generation)
    if not ok then
        d:delete(BUILDING)
        log(ERR, "certagent: cannot start building the name index: ", err)
    end
end

return _M
