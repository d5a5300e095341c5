-- Prepended to every script of the broker (see scripts.rs).
--
-- A script must never fail half-way: Redis does not roll back the writes a
-- script made before an error. So every script checks the type of each key
-- it will change before it changes anything, and stops with a
-- CELERIAC_WRONGTYPE error (which the broker reports as such) when one
-- holds something else, e.g. a list where kombu's `unacked` hash belongs.

-- Raises CELERIAC_WRONGTYPE: `key` holds a `got` where a `want` belongs.
local function refuse(key, got, want)
  error({err = 'CELERIAC_WRONGTYPE key "' .. key .. '" holds a ' .. got
    .. ' where celeriac keeps a ' .. want
    .. ' (was it used as a queue name?); nothing was changed'})
end

-- Raises CELERIAC_WRONGTYPE unless `key` is missing or holds a `want`.
local function expect(key, want)
  local got = redis.call('TYPE', key)['ok']
  if got ~= want and got ~= 'none' then refuse(key, got, want) end
end

-- Whether a message can be pushed onto `key` (a list, or missing).
local function listable(key)
  local got = redis.call('TYPE', key)['ok']
  return got == 'list' or got == 'none'
end

-- Sets `payload` aside in the dead-letter store (`celeriac.dlq` and
-- `celeriac.dlq.payloads`, as DeadLetters::dead_letter does) with `reason`.
-- Returns false, changing nothing, when the store itself is unusable.
local function bury(prefix, queue, reason, payload, now, n)
  local dlq, payloads = prefix .. 'celeriac.dlq', prefix .. 'celeriac.dlq.payloads'
  local pt = redis.call('TYPE', payloads)['ok']
  if not listable(dlq) or (pt ~= 'hash' and pt ~= 'none') then return false end
  local t = redis.call('TIME')
  local id = string.sub(redis.sha1hex(t[1] .. '.' .. t[2] .. ':' .. n .. ':' .. payload), 1, 32)
  redis.call('RPUSH', dlq, cjson.encode({id = id, queue = queue, reason = reason, failed_at = now}))
  redis.call('HSET', payloads, id, payload)
  return true
end

-- The queue name of a list key: without the key prefix and without kombu's
-- priority suffix.
local function queue_of(prefix, sep, key)
  local q = key
  if prefix ~= '' and string.sub(q, 1, #prefix) == prefix then q = string.sub(q, #prefix + 1) end
  local s = string.find(q, sep, 1, true)
  if s then q = string.sub(q, 1, s - 1) end
  return q
end
