-- Host name normalization, the same rules as the Go package agent/names
-- (checked against the shared table agent/names/testdata/names.json). Names
-- with an xn-- label also go through certagent.idna, loaded at the first one.
local byte = string.byte
local sub = string.sub
local find = string.find
local lower = string.lower
local format = string.format

local _M = { _VERSION = "0.1.0" }

local idna -- certagent.idna, required at the first name with an xn-- label

local MAX_LENGTH = 253
local MAX_LABEL = 63

local function invalid(raw, why)
    return nil, format("invalid name %q: %s", raw, why)
end

-- normalize(raw) returns the canonical name (ASCII lowercase, one trailing dot
-- removed) or nil and an error for anything that is not a host name with at
-- least two labels: IP literals, wildcards, underscores, spaces, control
-- characters, non-ASCII bytes and xn-- labels that are not valid IDNA2008
-- A-labels are rejected.
function _M.normalize(raw)
    if type(raw) ~= "string" or raw == "" then
        return invalid(tostring(raw or ""), "empty")
    end

    local bad = find(raw, "[^A-Za-z0-9.%-]")
    if bad then
        local c = byte(raw, bad)
        if c == 42 then -- *
            return invalid(raw, "wildcard")
        elseif c == 58 then -- :
            return invalid(raw, "contains ':' (port or IPv6 literal)")
        elseif c >= 128 then
            return invalid(raw, "non-ASCII byte (use the xn-- form)")
        elseif c < 32 or c == 127 then
            return invalid(raw, "control character")
        end
        return invalid(raw, format("character %q not allowed", sub(raw, bad, bad)))
    end

    local name = lower(raw)
    if byte(name, -1) == 46 then -- one trailing dot
        name = sub(name, 1, -2)
    end
    if name == "" then
        return invalid(raw, "empty")
    end
    if #name > MAX_LENGTH then
        return invalid(raw, "longer than " .. MAX_LENGTH .. " characters")
    end

    local labels = 0
    local start = 1
    local last
    local len = #name
    while start <= len + 1 do
        local dot = find(name, ".", start, true)
        local stop = dot and dot - 1 or len
        local label_len = stop - start + 1
        if label_len == 0 then
            return invalid(raw, "empty label")
        end
        if label_len > MAX_LABEL then
            return invalid(raw, "label too long")
        end
        if byte(name, start) == 45 or byte(name, stop) == 45 then
            return invalid(raw, "label starts or ends with a hyphen")
        end
        labels = labels + 1
        last = sub(name, start, stop)
        if not dot then
            break
        end
        start = dot + 1
    end

    if labels < 2 then
        return invalid(raw, "needs at least two labels")
    end
    if not find(last, "[^0-9]") then
        return invalid(raw, "last label is numeric (IP address?)")
    end
    if find(name, "xn--", 1, true) then
        idna = idna or require("certagent.idna")
        local ok, err = idna.check(name)
        if not ok then
            return invalid(raw, err)
        end
    end
    return name
end

-- parent returns the name without its first label when the rest still has at
-- least two labels ("a.b.example" -> "b.example"), else nil.
function _M.parent(name)
    local dot = find(name, ".", 1, true)
    if not dot then
        return nil
    end
    local rest = sub(name, dot + 1)
    if not find(rest, ".", 1, true) then
        return nil
    end
    return rest
end

return _M
