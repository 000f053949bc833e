-- The IDNA check of xn-- labels, the same as the Go package agent/names
-- (CheckIDNA): the label must be valid punycode (RFC 3492) that decodes to a
-- U-label in Normalization Form C made of code points UTS #46 and IDNA2008
-- allow (the generated table certagent.idna_data), with the hyphen,
-- leading-mark and joiner rules of golang.org/x/net/idna, and a name with a
-- right-to-left label must meet the Bidi rule (RFC 5893) in every label.
-- certagent.names loads this module at the first name with an xn-- label:
-- other names never pay for it.
local byte = string.byte
local sub = string.sub
local find = string.find
local format = string.format
local floor = math.floor
local insert = table.insert
local type = type
local band = bit.band
local rshift = bit.rshift

local data = require("certagent.idna_data")
local starts, props = data.starts, data.props
local ccc, decomp, compose = data.ccc, data.decomp, data.compose
local nranges = #starts

local _M = { _VERSION = "0.1.0" }

local MARK, VIRAMA, NFC_CHECK = 0x08, 0x80, 0x200
local ZWNJ, ZWJ = 0x200C, 0x200D

-- lookup returns the packed properties of code point cp (see idna_data.lua).
local function lookup(cp)
    local lo, hi = 1, nranges
    while lo < hi do
        local mid = rshift(lo + hi + 1, 1)
        if starts[mid] <= cp then
            lo = mid
        else
            hi = mid - 1
        end
    end
    return props[lo]
end

-- RFC 3492 parameters.
local BASE, TMIN, TMAX, SKEW, DAMP = 36, 1, 26, 38, 700
local MAXINT32 = 2147483647

local function adapt(delta, numpoints, first)
    delta = first and floor(delta / DAMP) or floor(delta / 2)
    delta = delta + floor(delta / numpoints)
    local k = 0
    while delta > floor((BASE - TMIN) * TMAX / 2) do
        delta = floor(delta / (BASE - TMIN))
        k = k + BASE
    end
    return k + floor((BASE - TMIN + 1) * delta / (delta + SKEW))
end

local function digit(c)
    if c >= 97 and c <= 122 then -- a-z (names are lowercase already)
        return c - 97
    elseif c >= 48 and c <= 57 then -- 0-9
        return c - 22
    end
    return nil
end

-- decode returns the code points of the punycode string enc, or nil. It
-- refuses what x/net/idna's decoder refuses, overflow included.
local function decode(enc)
    local len = #enc
    local last = 0 -- the last delimiter
    local p = find(enc, "-", 1, true)
    while p do
        last = p
        p = find(enc, "-", p + 1, true)
    end
    if last == 1 then
        return nil
    end
    local out = {}
    for j = 1, last - 1 do
        out[j] = byte(enc, j)
    end
    if last == len then
        return out
    end
    local pos = last + 1
    local i, n, bias = 0, 128, 72
    while pos <= len do
        local old_i, w = i, 1
        local k = BASE
        while true do
            if pos > len then
                return nil
            end
            local d = digit(byte(enc, pos))
            if not d then
                return nil
            end
            pos = pos + 1
            i = i + d * w
            if i > MAXINT32 then
                return nil
            end
            local t = k - bias
            if k <= bias then
                t = TMIN
            elseif k >= bias + TMAX then
                t = TMAX
            end
            if d < t then
                break
            end
            w = w * (BASE - t)
            if w > MAXINT32 then
                return nil
            end
            k = k + BASE
        end
        local x = #out + 1
        bias = adapt(i - old_i, x, old_i == 0)
        n = n + floor(i / x)
        i = i % x
        if n > 0x10FFFF then
            return nil
        end
        insert(out, i + 1, n)
        i = i + 1
    end
    return out
end

local function utf8_len(cp)
    if cp < 0x80 then
        return 1
    elseif cp < 0x800 then
        return 2
    elseif cp < 0x10000 then
        return 3
    end
    return 4
end

-- The joiner rules as x/net/idna runs them: a state machine over the
-- joining types (0 U or R, 1 L, 2 D, 3 T, 5 ZWJ, 6 ZWNJ, 7 virama).
local START, VIRAMA_ST, BEFORE, BEFORE_VIRAMA, AFTER, FAIL = 0, 1, 2, 3, 4, 5
local J_L, J_D, J_T, J_ZWJ, J_ZWNJ, J_VIRAMA = 1, 2, 3, 5, 6, 7
local join_states = {
    [START] = { [J_L] = BEFORE, [J_D] = BEFORE, [J_ZWNJ] = FAIL, [J_ZWJ] = FAIL, [J_VIRAMA] = VIRAMA_ST },
    [VIRAMA_ST] = { [J_L] = BEFORE, [J_D] = BEFORE },
    [BEFORE] = { [J_L] = BEFORE, [J_D] = BEFORE, [J_T] = BEFORE, [J_ZWNJ] = AFTER, [J_ZWJ] = FAIL,
        [J_VIRAMA] = BEFORE_VIRAMA },
    [BEFORE_VIRAMA] = { [J_L] = BEFORE, [J_D] = BEFORE, [J_T] = BEFORE },
    [AFTER] = { [J_L] = FAIL, [J_D] = BEFORE, [J_T] = AFTER, [J_ZWNJ] = FAIL, [J_ZWJ] = FAIL, [J_VIRAMA] = AFTER },
}

local function join_step(st, jt)
    if st == FAIL then
        return FAIL
    end
    return join_states[st][jt] or START
end

local function joiners_ok(cps, ps)
    local st = START
    for j = 1, #cps do
        local cp, p = cps[j], ps[j]
        local jt = band(rshift(p, 4), 3)
        if cp == ZWJ then
            jt = J_ZWJ
        elseif cp == ZWNJ then
            jt = J_ZWNJ
        end
        st = join_step(st, jt)
        if band(p, VIRAMA) ~= 0 then
            st = join_step(st, J_VIRAMA)
        end
    end
    return st ~= FAIL and st ~= AFTER
end

-- is_nfc reports whether the code points cps are in Normalization Form C:
-- decomposed, put in canonical order and composed again (UAX #15), they
-- come out the same.
local function is_nfc(cps)
    local d = {}
    for j = 1, #cps do
        local dec = decomp[cps[j]]
        if dec then
            for k = 1, #dec do
                d[#d + 1] = dec[k]
            end
        else
            d[#d + 1] = cps[j]
        end
    end
    for j = 2, #d do -- canonical order: a stable sort of each run of marks
        local cp = d[j]
        local c = ccc[cp]
        if c then
            local k = j
            while k > 1 and (ccc[d[k - 1]] or 0) > c do
                d[k] = d[k - 1]
                k = k - 1
            end
            d[k] = cp
        end
    end
    local starter_pos, starter = 1, d[1]
    local last_class = ccc[starter] and 256 or 0
    local n = 1
    for j = 2, #d do
        local cp = d[j]
        local c = ccc[cp] or 0
        local composite = compose[starter * 2097152 + cp]
        if composite and (last_class < c or last_class == 0) then
            d[starter_pos], starter = composite, composite
        else
            if c == 0 then
                starter_pos, starter = n + 1, cp
            end
            last_class = c
            n = n + 1
            d[n] = cp
        end
    end
    if n ~= #cps then
        return false
    end
    for j = 1, n do
        if d[j] ~= cps[j] then
            return false
        end
    end
    return true
end

-- check_ulabel returns the properties of the code points of a decoded
-- label, or nil and why it is refused.
local function check_ulabel(cps)
    local ps, ascii, joiner, nfc = {}, true, false, false
    local bytes, hyphen3, hyphen4 = 0, false, false
    for j = 1, #cps do
        local cp = cps[j]
        local p = lookup(cp)
        if p == 0 then
            return nil, format("has U+%04X, which IDNA2008 disallows", cp)
        end
        ps[j] = p
        if cp >= 0x80 then
            ascii = false
        end
        if cp == ZWJ or cp == ZWNJ then
            joiner = true
        end
        if band(p, NFC_CHECK) ~= 0 then
            nfc = true
        end
        if cp == 45 then -- x/net/idna counts the third and fourth byte
            hyphen3 = hyphen3 or bytes == 2
            hyphen4 = hyphen4 or bytes == 3
        end
        bytes = bytes + utf8_len(cp)
    end
    if #cps == 0 or ascii then
        return nil, "decodes to ASCII"
    end
    if nfc and not is_nfc(cps) then
        return nil, "is not in Normalization Form C"
    end
    if bytes > 4 and hyphen3 and hyphen4 then
        return nil, "has hyphens in the third and fourth position"
    end
    if cps[1] == 45 or cps[#cps] == 45 then
        return nil, "starts or ends with a hyphen"
    end
    if band(ps[1], MARK) ~= 0 then
        return nil, "starts with a combining mark"
    end
    if joiner and not joiners_ok(cps, ps) then
        return nil, "has a joiner out of its context"
    end
    return ps
end

-- The Bidi rule as golang.org/x/text/secure/bidirule runs it, over the
-- bidi classes of the table (1 L, 2 R or AL, 3 EN, 4 AN, 5 ES CS ET ON BN,
-- 6 NSM, 0 other).
local B_L, B_R, B_EN, B_AN, B_NEUT, B_NSM = 1, 2, 3, 4, 5, 6
local R_INITIAL, R_LTR, R_LTR_FINAL, R_RTL, R_RTL_FINAL, R_INVALID = 0, 1, 2, 3, 4, 5
local bidi_states = {
    [R_INITIAL] = { [B_L] = R_LTR_FINAL, [B_R] = R_RTL_FINAL },
    [R_RTL] = { [B_R] = R_RTL_FINAL, [B_EN] = R_RTL_FINAL, [B_AN] = R_RTL_FINAL, [B_NEUT] = R_RTL, [B_NSM] = R_RTL },
    [R_RTL_FINAL] = { [B_R] = R_RTL_FINAL, [B_EN] = R_RTL_FINAL, [B_AN] = R_RTL_FINAL, [B_NSM] = R_RTL_FINAL,
        [B_NEUT] = R_RTL },
    [R_LTR] = { [B_L] = R_LTR_FINAL, [B_EN] = R_LTR_FINAL, [B_NEUT] = R_LTR, [B_NSM] = R_LTR },
    [R_LTR_FINAL] = { [B_L] = R_LTR_FINAL, [B_EN] = R_LTR_FINAL, [B_NSM] = R_LTR_FINAL, [B_NEUT] = R_LTR },
    [R_INVALID] = {},
}

local function bidi_ok(ps)
    local st = R_INITIAL
    local en, an, rtl = false, false, false
    for j = 1, #ps do
        local class = band(ps[j], 7)
        en = en or class == B_EN
        an = an or class == B_AN
        rtl = rtl or class == B_R or class == B_AN
        if en and an then
            return false
        end
        st = bidi_states[st][class] or R_INVALID
        if st == R_INVALID and rtl then
            return false
        end
    end
    return st == R_INITIAL or st == R_LTR_FINAL or st == R_RTL_FINAL
end

local function is_rtl(ps)
    for j = 1, #ps do
        local class = band(ps[j], 7)
        if class == B_R or class == B_AN then
            return true
        end
    end
    return false
end

local function ascii_props(label)
    local ps = {}
    for j = 1, #label do
        ps[j] = lookup(byte(label, j))
    end
    return ps
end

-- check(name) returns true when every xn-- label of the normalized name is a
-- valid A-label, else nil and why not.
function _M.check(name)
    local labels = {}
    local rtl = false
    local start = 1
    while true do
        local dot = find(name, ".", start, true)
        local label = sub(name, start, dot and dot - 1 or #name)
        local ps
        if sub(label, 1, 4) == "xn--" then
            local cps = decode(sub(label, 5))
            if not cps then
                return nil, format("label %q is not valid punycode", label)
            end
            local why
            ps, why = check_ulabel(cps)
            if not ps then
                return nil, format("label %q %s", label, why)
            end
            rtl = rtl or is_rtl(ps)
        end
        labels[#labels + 1] = ps or label
        if not dot then
            break
        end
        start = dot + 1
    end
    if rtl then
        for j = 1, #labels do
            local ps = labels[j]
            if type(ps) == "string" then
                ps = ascii_props(ps)
            end
            if not bidi_ok(ps) then
                return nil, "a label breaks the Bidi rule of a right-to-left name"
            end
        end
    end
    return true
end

return _M
