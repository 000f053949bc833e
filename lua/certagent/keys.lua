-- Redis key names, as described in docs/redis-schema.md.
local _M = { _VERSION = "0.1.0" }

local mt = { __index = _M }

-- new(prefix) returns a key builder for the prefix (default "certagent:").
function _M.new(prefix)
    return setmetatable({ prefix = prefix or "certagent:" }, mt)
end

-- cert is the hash with the certificate record served for name.
function _M.cert(self, name)
    return self.prefix .. "cert:" .. name
end

-- wildcard is the record of the wildcard certificate covering the children of parent.
function _M.wildcard(self, parent)
    return self.prefix .. "cert:*." .. parent
end

-- token is the string with the HTTP-01 key authorization of token for host.
function _M.token(self, host, token)
    return self.prefix .. "token:" .. host .. ":" .. token
end

-- issuing is the string in which the agent says whether an order for name
-- runs ("issuing") or will not run now ("refused <reason>").
function _M.issuing(self, name)
    return self.prefix .. "issuing:" .. name
end

-- requests is the stream of names nginx saw without a certificate.
function _M.requests(self)
    return self.prefix .. "requests"
end

-- rules is the hash of the allow rules the agents publish for nginx.
function _M.rules(self)
    return self.prefix .. "rules"
end

-- alive is the agents' heartbeat: it exists while an agent runs.
function _M.alive(self)
    return self.prefix .. "alive"
end

-- changes is the stream of names whose certificate the agent wrote or deleted.
function _M.changes(self)
    return self.prefix .. "changes"
end

return _M
