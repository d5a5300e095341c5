-- Gives a claimed message back: onto the back of its list now, or into
-- the delayed set until `not_before`.
-- KEYS: unacked, unacked_index, claims, delayed, list.
-- ARGV: tag, token, payload, not_before (0 = now).
local holder = redis.call('HGET', KEYS[3], ARGV[1])
if holder ~= ARGV[2] then
  -- 0: another claim holds it; 2: nobody does.
  if holder then return 0 else return 2 end
end
local at = tonumber(ARGV[4])
expect(KEYS[1], 'hash')
expect(KEYS[2], 'zset')
if at > 0 then expect(KEYS[4], 'zset') else expect(KEYS[5], 'list') end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if at > 0 then
  redis.call('ZADD', KEYS[4], at, cjson.encode({k = KEYS[5], m = ARGV[3]}))
else
  redis.call('LPUSH', KEYS[5], ARGV[3])
end
return 1
