-- The result backend's store (runs after lua/store.lua).
-- KEYS: result keys. ARGV: ttl, then one json per key.
-- Returns how many were written.
return store_results(KEYS, 2, tonumber(ARGV[1]))
