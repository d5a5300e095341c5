-- Takes or renews the leader lease of a beat group (celeriac beat).
-- KEYS: lock (the token now holding the lease, with a TTL), fence (the
-- last token handed out). ARGV: the token held ('' for none), ttl in ms.
-- Returns the token now held, or false when another holder has the lease.
expect(KEYS[1], 'string')
expect(KEYS[2], 'string')
local current = redis.call('GET', KEYS[1])
if current then
  if current == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(current)
  end
  return false
end
-- Free or lapsed: a new token, larger than every one before it.
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
