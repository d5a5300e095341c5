-- Gives up the leader lease of a beat group if the token still holds it.
-- KEYS: lock. ARGV: token. Returns 1 if released, 0 if not held.
expect(KEYS[1], 'string')
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
