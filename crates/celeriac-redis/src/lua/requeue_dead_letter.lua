-- Moves a dead letter back onto its queue.
-- KEYS: dlq, dlq payloads, list. ARGV: record json, id.
-- Returns 1 when moved, 0 when the record is gone (someone else moved it),
-- -1 when its payload is missing (nothing is changed).
expect(KEYS[1], 'list')
expect(KEYS[2], 'hash')
expect(KEYS[3], 'list')
local payload = redis.call('HGET', KEYS[2], ARGV[2])
if not payload then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[3], payload)
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
