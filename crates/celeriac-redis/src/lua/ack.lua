-- Removes each claimed message whose claim token still matches.
-- KEYS: unacked, unacked_index, claims, deliveries.
-- ARGV: tag1, token1, tag2, token2, ...
-- Returns, in order, 1 for each message removed, 0 for one another claim
-- holds now, and 2 for one nobody holds (already acknowledged, or given
-- back after its lease lapsed).
local tags = {}
for i = 1, #ARGV, 2 do table.insert(tags, ARGV[i]) end
-- (HMGET checks the claim table's type: it fails before any change.)
local holders = redis.call('HMGET', KEYS[3], unpack(tags))
local mine, out = {}, {}
for j, tag in ipairs(tags) do
  if holders[j] == ARGV[2 * j] then
    table.insert(mine, tag)
    out[j] = 1
  elseif holders[j] then
    out[j] = 0
  else
    out[j] = 2
  end
end
if #mine > 0 then
  expect(KEYS[1], 'hash')
  expect(KEYS[2], 'zset')
  expect(KEYS[4], 'hash')
  redis.call('HDEL', KEYS[1], unpack(mine))
  redis.call('ZREM', KEYS[2], unpack(mine))
  redis.call('HDEL', KEYS[3], unpack(mine))
  redis.call('HDEL', KEYS[4], unpack(mine))
end
return out
