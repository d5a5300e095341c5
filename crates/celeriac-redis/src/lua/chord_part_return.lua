-- Records finished chord header parts and says whether they complete the
-- chord (Celery 5.x's native join, see chord.rs), for one part or for many
-- parts of the same chord at once.
-- KEYS: K.j, K.t, K.s, K.d, K.c.
-- ARGV: expires, claim ttl, claim token, then for each part: task id,
-- part record, index score.
-- Returns the parts in index order to the call that completes the chord,
-- an empty list to every other.
if redis.call('GET', KEYS[5]) == 'done' then return {} end
local added = {}
for i = 4, #ARGV, 3 do
  -- K.d dedupes: a part delivered again after its worker died is counted
  -- once (SADD says whether its <id>:<index> is new).
  if redis.call('SADD', KEYS[4], ARGV[i] .. ':' .. ARGV[i + 2]) == 1 then
    added[#added + 1] = ARGV[i + 2]
    added[#added + 1] = ARGV[i + 1]
  end
end
if #added > 0 then redis.call('ZADD', KEYS[1], unpack(added)) end
local count = redis.call('ZCARD', KEYS[1])
-- 0: results never expire, and neither does the join (EXPIRE 0 would
-- delete it: Celery's #5237).
if tonumber(ARGV[1]) > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
local size = tonumber(redis.call('GET', KEYS[3]))
local extra = tonumber(redis.call('GET', KEYS[2])) or 0
if size and count >= size + extra then
  if redis.call('SET', KEYS[5], ARGV[3], 'NX', 'EX', tonumber(ARGV[2])) then
    return redis.call('ZRANGE', KEYS[1], 0, -1)
  end
end
return {}
