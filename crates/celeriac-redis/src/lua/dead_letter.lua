-- Moves a claimed message to the dead-letter store.
-- KEYS: unacked, unacked_index, claims, deliveries, dlq, dlq payloads.
-- ARGV: tag, token, record json, id, payload.
local holder = redis.call('HGET', KEYS[3], ARGV[1])
if holder ~= ARGV[2] then
  -- 0: another claim holds it; 2: nobody does.
  if holder then return 0 else return 2 end
end
expect(KEYS[1], 'hash')
expect(KEYS[2], 'zset')
expect(KEYS[4], 'hash')
expect(KEYS[5], 'list')
expect(KEYS[6], 'hash')
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[3])
redis.call('HSET', KEYS[6], ARGV[4], ARGV[5])
return 1
