-- A GCRA step (see `celeriac_core::rate::gcra`), atomic across workers.
-- KEYS: bucket. ARGV: now, interval. Returns the wait in seconds as a
-- string (Lua numbers would be truncated to integers).
-- (GET checks the bucket's type before SET changes it.)
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat and tat > now then
  return tostring(tat - now)
end
local ttl = math.ceil(interval * 1000) + 1000
redis.call('SET', KEYS[1], tostring(now + interval), 'PX', ttl)
return '0'
