-- Moves the lease of each (tag, token) pair still held to now.
-- KEYS: unacked_index, claims. ARGV: now, tag1, token1, tag2, token2, ...
expect(KEYS[1], 'zset')
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
