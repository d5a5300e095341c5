-- Celery 5.x's native chord join (see chord.rs): records finished chord
-- header parts and says whether they complete the chord. Used by the
-- backend's chord_part_return.lua and the broker's settle.lua.

-- k: K.j, K.t, K.s, K.d, K.c of one chord. Each part is src[i] (task id),
-- src[i + 1] (part record), src[i + 2] (index score), for i = from, from +
-- step, ... up to `to`. Returns the
-- chord's parts in index order when these complete it (this call claims
-- K.c, or holds it already: an earlier run of the same call, with the same
-- token, whose reply was lost), else nil.
local function join_chord(k, expires, claim_ttl, token, src, from, to, step)
  if redis.call('GET', k[5]) == 'done' then return nil end
  local added = {}
  for i = from, to, step do
    -- K.d dedupes: a part delivered again after its worker died is counted
    -- once (SADD says whether its <id>:<index> is new).
    if redis.call('SADD', k[4], src[i] .. ':' .. src[i + 2]) == 1 then
      added[#added + 1] = src[i + 2]
      added[#added + 1] = src[i + 1]
    end
  end
  if #added > 0 then redis.call('ZADD', k[1], unpack(added)) end
  local count = redis.call('ZCARD', k[1])
  -- 0: results never expire, and neither does the join (EXPIRE 0 would
  -- delete it: Celery's #5237).
  if expires > 0 then
    for i = 1, 4 do redis.call('EXPIRE', k[i], expires) end
  end
  local size = tonumber(redis.call('GET', k[3]))
  local extra = tonumber(redis.call('GET', k[2])) or 0
  if size and count >= size + extra then
    if redis.call('SET', k[5], token, 'NX', 'EX', claim_ttl) or redis.call('GET', k[5]) == token then
      return redis.call('ZRANGE', k[1], 0, -1)
    end
  end
  return nil
end
