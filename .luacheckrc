-- luacheck (Debian's lua-check), run by scripts/test on lua/.
-- The Lua runs in lua-nginx-module on LuaJIT: its globals are ngx and ndk
-- (luacheck's ngx_lua standard, which is LuaJIT's with them).
std = "ngx_lua"
-- Lines as in the rest of the tree.
max_line_length = 120
-- Generated tables (go generate ./agent/names): rows as long as they come.
files["lua/certagent/idna_data.lua"] = { max_line_length = false }
