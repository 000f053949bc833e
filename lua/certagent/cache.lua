-- The certificate cache of the handshake path, keyed by record name (a host
-- name, or "*.<parent>" for a wildcard record), in two layers:
--
--   1. a per-worker LRU of parsed certificates (cdata from ngx.ssl): a hit
--      neither talks to Redis nor parses PEM, which is what makes a warm
--      handshake cost what a static certificate costs;
--   2. a shared dict of the record's text (its DER fields when it has them,
--      else its PEM), so that one worker's Redis lookup serves the others and
--      a restarted worker starts warm.

-- A record written by a current agent carries its chain and key as DER
-- besides the PEM (chain_der, key_der): parsing DER skips base64, the PEM
-- framing and OpenSSL's generic key decoders, the larger part of a cold
-- handshake's CPU (docs/benchmarks.md). A record without them (an older
-- agent's) or with DER this worker cannot parse is read from its PEM.
--
-- Records found missing in Redis are remembered for negative_ttl in the
-- requests dict (not in the certificate dict: a flood of unknown names must
-- not evict certificates). The changes stream (certagent.changes) drops a
-- name from every layer when the agent writes or deletes its record.
local ngx = ngx
local lrucache = require("resty.lrucache")

local shared = ngx.shared
local now = ngx.now
local update_time = ngx.update_time
local tostring = tostring
local tonumber = tonumber
local find = string.find
local sub = string.sub
local byte = string.byte
local type = type
local concat = table.concat
local min = math.min
local floor = math.floor

local parse_pem_cert, parse_pem_priv_key
local ffi_ok, ffi = pcall(require, "ffi")
do
    -- ngx.ssl loads only in the http subsystem; init() is called there.
    local ok, ngx_ssl = pcall(require, "ngx.ssl")
    if ok then
        parse_pem_cert = ngx_ssl.parse_pem_cert
        parse_pem_priv_key = ngx_ssl.parse_pem_priv_key
    end
end

local _M = { _VERSION = "0.1.0" }

-- ABSENT stands for "Redis has no usable record under this name".
local ABSENT = { absent = true }
_M.ABSENT = ABSENT

-- How long an invalidation is remembered, so that a Redis reply that was
-- already on its way when the change arrived is not cached (read_timeout is
-- far below this).
local STAMP_TTL = 60

local cfg, lru

-- key_matches(cert, key) checks that the leaf of a parsed chain belongs to the
-- parsed key before clear_certs: once the fallback is cleared, a key that
-- does not fit would fail the handshake. Without OpenSSL's symbols (an
-- unexpected build) the check is skipped.
local key_matches
do
    local ok = ffi_ok
    if ok then
        ok = pcall(ffi.cdef, [[
            int OPENSSL_sk_num(const void *sk);
            void *OPENSSL_sk_value(const void *sk, int i);
            int X509_check_private_key(const void *x509, const void *pkey);
            void ERR_clear_error(void);
        ]])
        local C = ffi.C
        if ok and pcall(function() return C.OPENSSL_sk_num and C.X509_check_private_key end) then
            key_matches = function(cert, key)
                if C.OPENSSL_sk_num(cert) < 1 then
                    return false
                end
                local leaf = C.OPENSSL_sk_value(cert, 0)
                if C.X509_check_private_key(leaf, key) == 1 then
                    return true
                end
                C.ERR_clear_error()
                return false
            end
        end
    end
    if not key_matches then
        key_matches = function() return true end
    end
end

-- first_use does to each certificate of a parsed chain what OpenSSL does at
-- its first use in a handshake (it decodes and caches the extensions, and
-- hashes the certificate), so that the workers a reload forks inherit it
-- done (warm). Without the symbols it does nothing: the first handshake does it.
local first_use = function() end
if ffi_ok and pcall(ffi.cdef, "uint32_t X509_get_extension_flags(void *x509);")
    and pcall(function() return ffi.C.X509_get_extension_flags and ffi.C.OPENSSL_sk_num end) then
    local C = ffi.C
    first_use = function(cert)
        for i = 0, C.OPENSSL_sk_num(cert) - 1 do
            C.X509_get_extension_flags(C.OPENSSL_sk_value(cert, i))
        end
    end
end

-- parse_der(chain_der, key_der) returns the chain and key cdata ngx.ssl's
-- set_cert and set_priv_key take, as parse_pem_cert and parse_pem_priv_key
-- return them (a STACK_OF(X509) and an EVP_PKEY, freed by the same
-- functions of the Lua module when collected), or nil when the DER does not
-- parse. Without the symbols it needs (an unexpected build) it is nil, and
-- records are read from their PEM.
local parse_der
do
    local C = ffi_ok and ffi.C
    local ok = ffi_ok and pcall(ffi.cdef, [[
        void *OPENSSL_sk_new_null(void);
        int OPENSSL_sk_push(void *sk, const void *data);
        void *d2i_X509(void **a, const unsigned char **pp, long length);
        void X509_free(void *x509);
        int X509_up_ref(void *x509);
        void *d2i_PrivateKey(int type, void **a, const unsigned char **pp, long length);
    ]])
    -- OpenSSL's key-type functions (deprecated in OpenSSL 3, still
    -- exported): without them keys are read by d2i_PrivateKey alone.
    local legacy_keys = ok and pcall(ffi.cdef, [[
        void *EC_KEY_new_by_curve_name(int nid);
        void *d2i_ECPrivateKey(void **key, const unsigned char **in, long len);
        void EC_KEY_free(void *key);
        void *d2i_RSAPrivateKey(void **a, const unsigned char **in, long len);
        void RSA_free(void *rsa);
        void *EVP_PKEY_new(void);
        int EVP_PKEY_assign(void *pkey, int type, void *key);
        void EVP_PKEY_free(void *pkey);
    ]]) and pcall(function()
        return C.EC_KEY_new_by_curve_name and C.d2i_ECPrivateKey and C.EC_KEY_free and C.d2i_RSAPrivateKey
            and C.RSA_free and C.EVP_PKEY_new and C.EVP_PKEY_assign and C.EVP_PKEY_free
    end)
    -- OpenSSL 3's key import from parameters: an EC key made so is the
    -- provider's own, as the leaf's public key is, so the key check and the
    -- first signature need not export a legacy EC_KEY to the provider
    -- (which builds the curve's group again). Absent before OpenSSL 3.
    local provider_keys = ok and pcall(ffi.cdef, [[
        struct certagent_ossl_param {
            const char *key; unsigned int data_type; const void *data; size_t data_size; size_t return_size;
        };
        void *EVP_PKEY_CTX_new_from_name(void *libctx, const char *name, const char *propquery);
        int EVP_PKEY_fromdata_init(void *ctx);
        int EVP_PKEY_fromdata(void *ctx, void **ppkey, int selection, void *params);
        void EVP_PKEY_CTX_free(void *ctx);
    ]]) and pcall(function()
        return C.EVP_PKEY_CTX_new_from_name and C.EVP_PKEY_fromdata_init and C.EVP_PKEY_fromdata and C.EVP_PKEY_CTX_free
    end)
    -- The Lua module's own destructors: declared by ngx.ssl already on
    -- some versions, hence one pcall each.
    pcall(ffi.cdef, "void ngx_http_lua_ffi_free_cert(void *cdata);")
    pcall(ffi.cdef, "void ngx_http_lua_ffi_free_priv_key(void *cdata);")
    ok = ok and pcall(function()
        return C.OPENSSL_sk_new_null and C.OPENSSL_sk_push and C.d2i_X509 and C.X509_free and C.X509_up_ref
            and C.d2i_PrivateKey
            and C.ngx_http_lua_ffi_free_cert and C.ngx_http_lua_ffi_free_priv_key and C.ERR_clear_error
    end)
    if ok then
        local cursor = ffi.new("const unsigned char *[1]")
        -- The key types certagent issues: EC (NID_X9_62_id_ecPublicKey)
        -- first, then RSA; d2i_PrivateKey with the type skips OpenSSL 3's
        -- search through every decoder.
        local KEY_TYPES = { 408, 6 }

        -- The intermediates: a handful of certificates shared by every chain
        -- of a CA, each parsed once per worker and shared by reference
        -- (X509_up_ref; freeing a chain drops its references). Parsing an
        -- X.509 certificate is most of what is left of a cold handshake's
        -- cost. Bounded: past INTERMEDIATES_MAX the table starts afresh.
        local INTERMEDIATES_MAX = 64
        local intermediates, intermediates_count = {}, 0

        -- der_element returns the tag of the DER element starting at
        -- position i of s, the position of its content and the content's
        -- length, or nil.
        local function der_element(s, i)
            local tag, first = byte(s, i, i + 1)
            if not first then
                return nil
            end
            if first < 0x80 then
                return tag, i + 2, first
            end
            local octets = first - 0x80
            if octets < 1 or octets > 3 then
                return nil
            end
            local len = 0
            for k = 1, octets do
                local b = byte(s, i + 1 + k)
                if not b then
                    return nil
                end
                len = len * 256 + b
            end
            return tag, i + 2 + octets, len
        end

        -- der_length returns the length of the DER element starting at
        -- position i of s (its tag, length octets and content), or nil.
        local function der_length(s, i)
            local _, content, len = der_element(s, i)
            return content and content - i + len
        end

        local function parse_x509(der, i, n)
            cursor[0] = ffi.cast("const unsigned char *", der) + (i - 1)
            local x509 = C.d2i_X509(nil, cursor, n)
            if x509 == nil or cursor[0] - ffi.cast("const unsigned char *", der) ~= i - 1 + n then
                if x509 ~= nil then
                    C.X509_free(x509)
                end
                return nil
            end
            return x509
        end

        -- intermediate returns a new reference to the parsed certificate
        -- der[i, i+n-1], from the table when it was parsed before.
        local function intermediate(der, i, n)
            local key = sub(der, i, i + n - 1)
            local x509 = intermediates[key]
            if not x509 then
                x509 = parse_x509(der, i, n)
                if not x509 then
                    return nil
                end
                if intermediates_count >= INTERMEDIATES_MAX then
                    intermediates, intermediates_count = {}, 0
                end
                x509 = ffi.gc(x509, C.X509_free)
                intermediates[key] = x509
                intermediates_count = intermediates_count + 1
            end
            C.X509_up_ref(x509)
            return x509
        end

        local function chain_of(der)
            local sk = C.OPENSSL_sk_new_null()
            if sk == nil then
                return nil
            end
            sk = ffi.gc(sk, C.ngx_http_lua_ffi_free_cert)
            local i, len = 1, #der
            while i <= len do
                local n = der_length(der, i)
                if not n or i + n - 1 > len then
                    return nil
                end
                local x509
                if i == 1 then
                    x509 = parse_x509(der, i, n) -- the leaf: its own
                else
                    x509 = intermediate(der, i, n)
                end
                if not x509 then
                    return nil
                end
                if C.OPENSSL_sk_push(sk, x509) == 0 then
                    C.X509_free(x509)
                    return nil
                end
                i = i + n
            end
            return sk
        end

        -- The AlgorithmIdentifier contents of a PKCS #8 key that
        -- typed_key reads, and how: OpenSSL 3's d2i_PrivateKey decodes
        -- through its provider decoders, about ten times the CPU of the
        -- key type's own d2i (an EC key: 140 against 12 µs on the machine
        -- of docs/benchmarks.md). The key signs as fast either way.
        local ALGORITHMS = {
            -- id-ecPublicKey, prime256v1 (NID 415) / secp384r1 (NID 715)
            ["\6\7\42\134\72\206\61\2\1\6\8\42\134\72\206\61\3\1\7"] = { ec = 415, group = "prime256v1" },
            ["\6\7\42\134\72\206\61\2\1\6\5\43\129\4\0\34"] = { ec = 715, group = "secp384r1" },
            -- rsaEncryption, NULL parameters
            ["\6\9\42\134\72\134\247\13\1\1\1\5\0"] = { rsa = true },
        }
        local EVP_PKEY_EC, EVP_PKEY_RSA = 408, 6
        local box = ffi.new("void *[1]")

        -- pkcs8 returns the AlgorithmIdentifier contents of the PKCS #8
        -- PrivateKeyInfo der and the position and length of its inner key,
        -- or nil.
        local function pkcs8(der)
            local tag, i = der_element(der, 1)
            if tag ~= 0x30 then
                return nil
            end
            local version_tag, v, vlen = der_element(der, i)
            if version_tag ~= 0x02 then
                return nil
            end
            local alg_tag, a, alen = der_element(der, v + vlen)
            if alg_tag ~= 0x30 then
                return nil
            end
            local key_tag, k, klen = der_element(der, a + alen)
            if key_tag ~= 0x04 or k + klen - 1 > #der then
                return nil
            end
            return sub(der, a, a + alen - 1), k, klen
        end

        -- The parameters of an EC key import (OSSL_PARAM: the curve's name,
        -- the private key as an unsigned integer in the host's byte order,
        -- the public key's encoded point), filled in per key; params[3],
        -- zeroed, ends the list.
        local PARAM_UNSIGNED_INTEGER, PARAM_UTF8_STRING, PARAM_OCTET_STRING = 2, 4, 5
        local SELECT_KEYPAIR = 0x87 -- EVP_PKEY_KEYPAIR: the key pair and the domain parameters
        local PARAM_UNMODIFIED = ffi.cast("size_t", -1)
        local params = provider_keys and ffi.new("struct certagent_ossl_param[4]")
        local priv_buf = ffi.new("unsigned char[72]")
        local little_endian = ffi.abi("le")
        local import_ctx -- per worker, made at its first key

        local function set_param(i, name, data_type, data, size)
            local param = params[i]
            param.key, param.data_type, param.data, param.data_size = name, data_type, data, size
            param.return_size = PARAM_UNMODIFIED
        end

        -- ec_keypair returns the private key's and the public key's position
        -- and length in the ECPrivateKey (RFC 5915) at der[k, k+klen-1], or
        -- nil when it has no public key or does not parse.
        local function ec_keypair(der, k, klen)
            local tag, i, len = der_element(der, k)
            if tag ~= 0x30 or i + len ~= k + klen then
                return nil
            end
            local last = i + len
            local version_tag, v, vlen = der_element(der, i)
            if version_tag ~= 0x02 then
                return nil
            end
            local priv_tag, p, plen = der_element(der, v + vlen)
            if priv_tag ~= 0x04 or plen < 1 or plen > 72 then
                return nil
            end
            i = p + plen
            while i < last do
                local field, f, flen = der_element(der, i)
                if not field or f + flen > last then
                    return nil
                end
                if field == 0xa1 then -- [1] publicKey: a BIT STRING, no unused bits
                    local bits_tag, b, blen = der_element(der, f)
                    if bits_tag ~= 0x03 or blen < 2 or byte(der, b) ~= 0 or b + blen ~= f + flen then
                        return nil
                    end
                    return p, plen, b + 1, blen - 1
                end
                i = f + flen
            end
            return nil
        end

        -- provider_ec_key imports the ECPrivateKey at der[k, k+klen-1] on
        -- the named curve as a provider key, or returns nil (no public key in
        -- it, or OpenSSL refuses it: the legacy reading then tries).
        local function provider_ec_key(der, k, klen, group)
            local p, plen, q, qlen = ec_keypair(der, k, klen)
            if not p then
                return nil
            end
            if not import_ctx then
                local ctx = C.EVP_PKEY_CTX_new_from_name(nil, "EC", nil)
                if ctx == nil or C.EVP_PKEY_fromdata_init(ctx) ~= 1 then
                    -- This OpenSSL cannot import EC keys so: not tried again.
                    if ctx ~= nil then
                        C.EVP_PKEY_CTX_free(ctx)
                    end
                    C.ERR_clear_error()
                    provider_keys = false
                    return nil
                end
                import_ctx = ctx -- kept for the worker's life
            end
            for j = 0, plen - 1 do
                priv_buf[little_endian and j or plen - 1 - j] = byte(der, p + plen - 1 - j)
            end
            local base = ffi.cast("const unsigned char *", der)
            set_param(0, "group", PARAM_UTF8_STRING, group, #group)
            set_param(1, "priv", PARAM_UNSIGNED_INTEGER, priv_buf, plen)
            set_param(2, "pub", PARAM_OCTET_STRING, base + (q - 1), qlen)
            box[0] = nil
            local imported = C.EVP_PKEY_fromdata(import_ctx, box, SELECT_KEYPAIR, params)
            ffi.fill(priv_buf, plen)
            if imported ~= 1 or box[0] == nil then
                C.ERR_clear_error()
                return nil
            end
            return ffi.gc(box[0], C.ngx_http_lua_ffi_free_priv_key)
        end

        -- typed_key reads a PKCS #8 EC (P-256, P-384) key as a provider key,
        -- or with the key type's own d2i, as it does an RSA key, or returns
        -- nil (another type, or it does not parse: d2i_PrivateKey then tries).
        local function typed_key(der)
            local alg, k, klen = pkcs8(der)
            local how = alg and ALGORITHMS[alg]
            if not how then
                return nil
            end
            if how.group and provider_keys then
                local pkey = provider_ec_key(der, k, klen, how.group)
                if pkey then
                    return pkey
                end
            end
            if not legacy_keys then
                return nil
            end
            local key, key_type, free
            cursor[0] = ffi.cast("const unsigned char *", der) + (k - 1)
            if how.ec then
                -- The inner ECPrivateKey of PKCS #8 may leave out the curve:
                -- the key is read into one made with it.
                box[0] = C.EC_KEY_new_by_curve_name(how.ec)
                if box[0] == nil then
                    return nil
                end
                key, key_type, free = box[0], EVP_PKEY_EC, C.EC_KEY_free
                if C.d2i_ECPrivateKey(box, cursor, klen) == nil then
                    free(key)
                    return nil
                end
            else
                key, key_type, free = C.d2i_RSAPrivateKey(nil, cursor, klen), EVP_PKEY_RSA, C.RSA_free
                if key == nil then
                    return nil
                end
            end
            local pkey = C.EVP_PKEY_new()
            if cursor[0] - ffi.cast("const unsigned char *", der) ~= k - 1 + klen or pkey == nil
                or C.EVP_PKEY_assign(pkey, key_type, key) ~= 1 then
                free(key)
                if pkey ~= nil then
                    C.EVP_PKEY_free(pkey)
                end
                return nil
            end
            return ffi.gc(pkey, C.ngx_http_lua_ffi_free_priv_key)
        end

        local function key_of(der)
            local typed = (legacy_keys or provider_keys) and typed_key(der)
            if typed then
                return typed
            end
            for i = 1, #KEY_TYPES do
                cursor[0] = ffi.cast("const unsigned char *", der)
                local pkey = C.d2i_PrivateKey(KEY_TYPES[i], nil, cursor, #der)
                if pkey ~= nil then
                    return ffi.gc(pkey, C.ngx_http_lua_ffi_free_priv_key)
                end
            end
            return nil
        end

        parse_der = function(chain_der, key_der)
            local chain = chain_of(chain_der)
            local key = chain and key_of(key_der)
            if not key then
                C.ERR_clear_error()
                return nil
            end
            return chain, key
        end
    end
end

-- is_text reports whether a reply field holds a string (not ngx.null, not
-- empty).
local function is_text(v)
    return type(v) == "string" and v ~= ""
end

-- init creates the per-worker LRU. It runs in init_by_lua, before the fork:
-- every worker gets its own copy.
function _M.init(config)
    cfg = config
    local err
    lru, err = lrucache.new(cfg.lru_size)
    if not lru then
        return nil, "creating the certificate cache: " .. tostring(err)
    end
    return true
end

-- parse turns the fields of a record into a cache entry, or nil and why the
-- record is unusable: its DER fields when it has them and they parse, else
-- its PEM fields. The entry's der is true when it came from DER (what put
-- keeps in the shared dict).
function _M.parse(fullchain, key_pem, not_after, fetched_at, chain_der, key_der)
    if not not_after then
        return nil, "field not_after missing or not a number"
    end
    local cert, key, der
    if parse_der and is_text(chain_der) and is_text(key_der) then
        cert, key = parse_der(chain_der, key_der)
        der = cert ~= nil and key_matches(cert, key)
    end
    if not der then
        if type(fullchain) ~= "string" or type(key_pem) ~= "string" then
            return nil, "fields fullchain or key missing"
        end
        local err
        cert, err = parse_pem_cert(fullchain)
        if not cert then
            return nil, "fullchain: " .. tostring(err)
        end
        key, err = parse_pem_priv_key(key_pem)
        if not key then
            return nil, "key: " .. tostring(err)
        end
        if not key_matches(cert, key) then
            return nil, "the key does not belong to the first certificate of fullchain"
        end
    end
    return { cert = cert, key = key, not_after = not_after, fresh_until = fetched_at + cfg.cache_ttl, der = der }
end

-- The shared dict holds "<fetched_at> <not_after> <length of the chain> " ..
-- chain .. key: one string, one get. The chain and key are DER when the
-- length ends in "d", else PEM. (A worker of an older version, during a
-- reload, reads no number from "<length>d" and asks Redis instead.)
local function encode(fetched_at, not_after, chain, key, der)
    return concat({ floor(fetched_at), " ", not_after, " ", #chain, der and "d " or " ", chain, key })
end

local function decode(value)
    local a = find(value, " ", 1, true)
    local b = a and find(value, " ", a + 1, true)
    local c = b and find(value, " ", b + 1, true)
    if not c then
        return nil
    end
    local fetched_at = tonumber(sub(value, 1, a - 1))
    local not_after = tonumber(sub(value, a + 1, b - 1))
    local der = byte(value, c - 1) == 100 -- "d"
    local chain_len = tonumber(sub(value, b + 1, der and c - 2 or c - 1))
    if not fetched_at or not not_after or not chain_len then
        return nil
    end
    return fetched_at, not_after, sub(value, c + 1, c + chain_len), sub(value, c + chain_len + 1), der
end

-- from_shared returns the entry the shared dict holds for rec (parsed and put
-- into the LRU), or nil. With stale set it also returns entries whose
-- cache_ttl has passed (the shared dict keeps them until their not_after);
-- with fresh_only it parses none of those.
local function from_shared(rec, t, stale, fresh_only)
    local dict = shared[cfg.certs_dict]
    local value = dict:get("c:" .. rec)
    if not value then
        if not stale then
            return nil
        end
        value = dict:get_stale("c:" .. rec)
        if not value then
            return nil
        end
    end
    local fetched_at, not_after, chain, key, der = decode(value)
    if not fetched_at or not_after <= t or (fresh_only and fetched_at + cfg.cache_ttl <= t) then
        return nil
    end
    local entry
    if der then
        entry = _M.parse(nil, nil, not_after, fetched_at, chain, key)
    else
        entry = _M.parse(chain, key, not_after, fetched_at)
    end
    if not entry then
        -- Only valid records are ever written there; treat it as not cached.
        dict:delete("c:" .. rec)
        return nil
    end
    if entry.fresh_until > t then
        lru:set(rec, entry, min(entry.fresh_until, not_after) - t)
    end
    return entry
end

-- warm parses the fresh certificates the shared dict holds into this
-- process's LRU, as a handshake's lookup would, until the LRU is full or the
-- clock (ngx.now, updated) reaches deadline. It runs in nginx's master at a
-- reload (certagent.init), before the new workers are forked: they inherit
-- the LRU, so the names the node served before the reload cost them no
-- parse. The most recently read from the dict come first (get_keys lists
-- the least recently used key first); reading moves a key to the recent
-- end, so the parsed keys are read once more, oldest first, to leave the
-- dict's order (what it evicts first when full) as it was. It returns how
-- many certificates it cached and how many it left when the deadline came.
function _M.warm(deadline)
    local dict = shared[cfg.certs_dict]
    local room = lru:capacity() - lru:count()
    local keys = dict:get_keys(0)
    local parsed, cached, left = {}, 0, 0
    for i = #keys, 1, -1 do
        local key = keys[i]
        if sub(key, 1, 2) == "c:" then
            update_time()
            local t = now()
            if cached >= room then
                break
            elseif t >= deadline then
                left = left + 1
            else
                parsed[#parsed + 1] = key
                local entry = from_shared(sub(key, 3), t, false, true)
                if entry then
                    first_use(entry.cert)
                    cached = cached + 1
                end
            end
        end
    end
    for i = #parsed, 1, -1 do
        dict:get(parsed[i])
    end
    return cached, left
end

-- hot returns this worker's parsed certificate for rec when it is fresh, and
-- nothing else: the handshake's first, cheapest look.
function _M.hot(rec, t)
    local entry = lru:get(rec)
    if entry and not entry.bad and entry.not_after > t then
        return entry
    end
    return nil
end

-- held reports whether this worker's LRU has anything for rec (a
-- certificate, expired or not, or an unusable record's marker).
function _M.held(rec)
    return lru:get(rec) ~= nil
end

-- get returns what the cache knows about the record rec at time t: a fresh
-- entry ({cert, key, not_after}), a { bad = true } marker, ABSENT, or nil
-- when Redis must be asked. An entry comes with the layer that held it
-- ("lru" or "shared"), for the status counters.
function _M.get(rec, t)
    local entry = lru:get(rec)
    if entry then
        if entry.bad or entry.not_after > t then
            return entry, "lru"
        end
        lru:delete(rec)
    end
    entry = from_shared(rec, t, false)
    if entry and entry.fresh_until > t then
        return entry, "shared"
    end
    if shared[cfg.requests_dict]:get("n:" .. rec) then
        return ABSENT
    end
    return nil
end

-- stale returns a cached entry for rec whose cache_ttl has passed but whose
-- certificate is still valid: what a handshake serves while Redis cannot be
-- reached. An expired certificate is never returned.
function _M.stale(rec, t)
    local _, entry = lru:get(rec)
    if entry and not entry.bad and entry.not_after > t then
        return entry
    end
    entry = lru:get(rec)
    if entry and not entry.bad and entry.not_after > t then
        return entry
    end
    return from_shared(rec, t, true)
end

-- clock returns the current time for a lookup that is about to ask Redis.
function _M.clock()
    update_time()
    return now()
end

-- invalidated_since reports whether rec (or everything) was invalidated at or
-- after started: the reply of a lookup begun before is then not cached.
local function invalidated_since(rec, started)
    local dict = shared[cfg.certs_dict]
    local stamp = dict:get("s:" .. rec)
    if stamp and stamp >= started then
        return true
    end
    stamp = dict:get("s:*")
    return stamp ~= nil and stamp >= started
end

-- put caches a record read from Redis at started: the parsed entry in the
-- LRU, the fields it was parsed from (DER or PEM, entry.der) in the shared
-- dict, both until min(cache_ttl, not_after), and drops the record's missing
-- marker (a held handshake found the record before the changes stream said
-- it was written).
function _M.put(rec, entry, chain, key, started)
    if invalidated_since(rec, started) then
        return
    end
    shared[cfg.requests_dict]:delete("n:" .. rec)
    local t = now()
    local ttl = min(entry.fresh_until, entry.not_after) - t
    if ttl <= 0 then
        return
    end
    lru:set(rec, entry, ttl)
    -- The shared copy lives until the certificate expires, so that it can be
    -- served stale while Redis is unreachable; freshness is checked on read.
    local dict = shared[cfg.certs_dict]
    local ok, err = dict:set("c:" .. rec, encode(started, entry.not_after, chain, key, entry.der),
                             entry.not_after - t)
    if not ok then
        ngx.log(ngx.WARN, "certagent: lua_shared_dict ", cfg.certs_dict, ": caching ", rec, ": ", err)
    end
end

-- put_absent remembers for negative_ttl that Redis has no usable record rec.
function _M.put_absent(rec, started)
    if invalidated_since(rec, started) then
        return
    end
    shared[cfg.requests_dict]:set("n:" .. rec, true, cfg.negative_ttl)
end

-- put_bad remembers an unusable record in this worker for error_ttl, so that
-- it is logged once, not on every handshake.
function _M.put_bad(rec)
    lru:set(rec, { bad = true }, cfg.error_ttl)
end

-- invalidate drops rec from every layer (this worker's LRU, the shared dict,
-- the missing-record marker) and stamps it, so that a lookup already in
-- flight does not cache what it read before the change.
function _M.invalidate(rec)
    local dict = shared[cfg.certs_dict]
    dict:set("s:" .. rec, now(), STAMP_TTL)
    dict:delete("c:" .. rec)
    shared[cfg.requests_dict]:delete("n:" .. rec)
    lru:delete(rec)
end

-- forget drops rec from this worker's LRU only: the worker that read the
-- changes entry has dropped it from the rest (invalidate).
function _M.forget(rec)
    lru:delete(rec)
end

-- forget_all empties this worker's LRU only (flush did the rest).
function _M.forget_all()
    lru:flush_all()
end

-- flush drops every certificate this worker and the shared dict hold (the
-- changes stream lost entries this worker had not read). Missing-record
-- markers expire on their own within negative_ttl.
function _M.flush()
    local dict = shared[cfg.certs_dict]
    local last, pos = dict:get("changes:last"), dict:get("changes:pos")
    dict:flush_all()
    -- flush_all only marks items expired, and get_stale would still find
    -- them: free them for real.
    dict:flush_expired()
    dict:set("s:*", now(), STAMP_TTL)
    if last then
        dict:set("changes:last", last)
        dict:set("changes:pos", pos)
    end
    lru:flush_all()
end

-- stats describes the cache, for tests and operators.
function _M.stats()
    local dict = shared[cfg.certs_dict]
    local keys = dict:get_keys(0)
    local certs = 0
    for i = 1, #keys do
        if sub(keys[i], 1, 2) == "c:" then
            certs = certs + 1
        end
    end
    return {
        lru_count = lru:count(),
        lru_capacity = lru:capacity(),
        shared_certs = certs,
        shared_free_bytes = dict.free_space and dict:free_space() or nil,
    }
end

return _M
