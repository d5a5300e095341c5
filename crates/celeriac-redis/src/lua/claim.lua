-- The atomic claim: pops up to `max` messages from the lists in order and
-- records every one in kombu's `unacked`/`unacked_index` and celeriac's
-- claim table, together with the batch itself under the claim's token, so
-- that a claim whose reply was lost can be resumed. Due delayed messages
-- are moved onto their lists first.
--
-- The first list is the consumer's inbox: the blocking wait that wakes an
-- idle consumer moves the message it waited for there (`BLMOVE`), and this
-- script, sent in the same round trip right behind it, takes it from
-- there (see broker/wake.rs). With `wake` set and exactly one message in
-- the inbox, that message is the one the wait's reply carried: its
-- payload is not sent again (its length stands in for it), so a big
-- message crosses the network once.
--
-- The bookkeeping is written with one multi-field command per structure
-- for the whole batch (`RPOP key count`, `HSET` with many fields, ...):
-- inside a script each `redis.call` costs microseconds, so the per-message
-- cost is what matters (see BENCHMARKS.md, W1). The batch record is one
-- more field of the claim table's HSET, not a command of its own.
--
-- KEYS: unacked, unacked_index, claims, deliveries, delayed, inbox, list...
-- ARGV: now, max, token, key prefix, resume (1: this token's reply was
--       lost, return its recorded batch), the consumer's batch field in the
--       claim table, separator, wake (1: the inbox's one message came with
--       the wait's reply), then the queue name of each list from the inbox
--       on (ARGV[i + 3] for KEYS[i], from 6 on)
-- Returns a flag (1: a resumed batch, 0: a new one), then queue, message
-- (or, for the message the wait's reply carried, its length), tag,
-- delivery count and a revoked flag for each message claimed.
local unacked, index, claims, deliveries, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local batch = ARGV[6]
-- The first list key (the inbox), and the offset of its queue name in ARGV.
local FIRST, NAMES = 6, 3
local INBOX = FIRST
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local token = ARGV[3]
local prefix = ARGV[4]
local sep = ARGV[7]

-- The value of the string field `name` of the envelope, found without
-- decoding it (a plain search is far cheaper than cjson or a pattern):
-- nil unless `"name"` occurs exactly once in the envelope, as a key
-- (followed by a colon) whose value is a string without escapes. The
-- caller then decodes the envelope in full.
local function field(m, name)
  local key = '"' .. name .. '"'
  local s, e = string.find(m, key, 1, true)
  if not s or string.find(m, key, e + 1, true) then return nil end
  return string.match(m, '^%s*:%s*"([^"\]*)"', e + 1)
end

-- Tag, task id (or false) and kombu's unacked entry of a message, and
-- whether the entry holds the message verbatim right after its `[`.
local function describe(m, queue, j)
  local tag, id, ex, rk = field(m, 'delivery_tag'), field(m, 'id'), field(m, 'exchange'), field(m, 'routing_key')
  local entry
  local verbatim = true
  if tag and id and ex and rk then
    entry = '[' .. m .. ',"' .. ex .. '","' .. rk .. '"]'
  else
    tag, id, ex, rk = nil, false, '', queue
    local ok, env = pcall(cjson.decode, m)
    if ok and type(env) == 'table' and type(env.headers) == 'table' and type(env.headers.id) == 'string' then
      id = env.headers.id
    end
    if ok and type(env) == 'table' and type(env.properties) == 'table' then
      tag = env.properties.delivery_tag
      local di = env.properties.delivery_info
      if type(di) == 'table' then
        if type(di.exchange) == 'string' then ex = di.exchange end
        if type(di.routing_key) == 'string' then rk = di.routing_key end
      end
      entry = '[' .. m .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']'
    else
      entry = cjson.encode({m, ex, rk})
      verbatim = false
    end
  end
  if type(tag) ~= 'string' or tag == '' then
    tag = 'celeriac-malformed-' .. token .. '-' .. j
  end
  return tag, id, entry, verbatim
end

-- A resumed claim: the messages of the recorded batch still held under
-- this token (a lapsed lease may have given some back), as they were
-- claimed. Reads only.
local function resume(b)
  local out = {1}
  for k = 1, #b, 3 do
    local tag, queue, len = b[k], b[k + 1], b[k + 2]
    local entry = redis.call('HGET', unacked, tag)
    if entry and redis.call('HGET', claims, tag) == token then
      local m
      if len > 0 then
        m = string.sub(entry, 2, 1 + len)
      else
        local ok, e = pcall(cjson.decode, entry)
        if ok and type(e) == 'table' then m = e[1] end
      end
      if type(m) == 'string' then
        local _, id = describe(m, queue, k)
        local revoked = 0
        if id and redis.call('EXISTS', prefix .. 'celeriac.revoked.' .. id) == 1 then revoked = 1 end
        table.insert(out, queue)
        table.insert(out, m)
        table.insert(out, tag)
        table.insert(out, tonumber(redis.call('HGET', deliveries, tag)) or 1)
        table.insert(out, revoked)
      end
    end
  end
  return out
end

if ARGV[5] == '1' then
  local rec = redis.call('HGET', claims, batch)
  if rec then
    local ok, r = pcall(cjson.decode, rec)
    if ok and type(r) == 'table' and r.id == token and type(r.b) == 'table' then
      return resume(r.b)
    end
  end
end

-- Check, then change. The bookkeeping keys this claim writes must hold
-- what they should before anything is popped. (The delayed set is checked
-- by its read, the first command.)
expect(unacked, 'hash')
expect(index, 'zset')
expect(claims, 'hash')
expect(deliveries, 'hash')

-- Due delayed messages onto their lists; one that cannot go there (an
-- undecodable entry, a list key holding something else) is dead-lettered
-- with the reason, or left in place if even that is impossible.
local read, due = pcall(redis.call, 'ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
if not read then refuse(delayed, redis.call('TYPE', delayed)['ok'], 'zset') end
for n, d in ipairs(due) do
  local ok, item = pcall(cjson.decode, d)
  if ok and type(item) == 'table' and type(item.k) == 'string' and type(item.m) == 'string' then
    if listable(item.k) then
      redis.call('RPUSH', item.k, item.m)
      redis.call('ZREM', delayed, d)
    elseif bury(prefix, queue_of(prefix, sep, item.k), 'its queue\'s key "' .. item.k
        .. '" holds a ' .. redis.call('TYPE', item.k)['ok'] .. ', not a list', item.m, now, n) then
      redis.call('ZREM', delayed, d)
    end
  elseif bury(prefix, '', 'an undecodable entry of the delayed set', d, now, n) then
    redis.call('ZREM', delayed, d)
  end
end

-- Up to n messages from the tail of a list (oldest first); nil and the
-- key's type when it holds something else (a pop then takes nothing).
local function pop(key, n)
  local ok, got = pcall(redis.call, 'RPOP', key, n)
  if ok then return got or {} end
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'list' and t ~= 'none' then return nil, t end
  -- Redis before 6.2: no count.
  local out = {}
  for _ = 1, n do
    local m = redis.call('RPOP', key)
    if not m then break end
    table.insert(out, m)
  end
  return out
end

-- A list's type is checked by its pop, which costs nothing more: a pop
-- from a key holding something else fails and takes nothing, and what
-- the earlier pops took is put back exactly where it was before the claim
-- is refused, so nothing has changed.
local queues, msgs, taken = {}, {}, {}
-- The index of the message the wait's reply carried, if any.
local woke = nil
for i = FIRST, #KEYS do
  if #msgs >= max then break end
  local got, t = pop(KEYS[i], max - #msgs)
  if not got then
    for k = #taken, 1, -1 do
      local part = taken[k]
      for x = #part.m, 1, -1 do redis.call('RPUSH', part.key, part.m[x]) end
    end
    refuse(KEYS[i], t, 'list')
  end
  if #got > 0 then table.insert(taken, {key = KEYS[i], m = got}) end
  if i == INBOX and ARGV[8] == '1' and #got == 1 and redis.call('LLEN', KEYS[i]) == 0 then
    woke = 1
  end
  for _, m in ipairs(got) do
    table.insert(queues, ARGV[i + NAMES])
    table.insert(msgs, m)
  end
end
if #msgs == 0 then return {0} end
local tags, entries, claimed, leases, revkeys, revidx, record = {}, {}, {}, {}, {}, {}, {}
for j, m in ipairs(msgs) do
  local tag, id, entry, verbatim = describe(m, queues[j], j)
  tags[j] = tag
  table.insert(entries, tag)
  table.insert(entries, entry)
  table.insert(leases, now)
  table.insert(leases, tag)
  table.insert(claimed, tag)
  table.insert(claimed, token)
  table.insert(record, tag)
  table.insert(record, queues[j])
  table.insert(record, verbatim and #m or 0)
  if id then
    table.insert(revkeys, prefix .. 'celeriac.revoked.' .. id)
    table.insert(revidx, j)
  end
end
redis.call('HSET', unacked, unpack(entries))
redis.call('ZADD', index, unpack(leases))
table.insert(claimed, batch)
table.insert(claimed, cjson.encode({id = token, b = record}))
redis.call('HSET', claims, unpack(claimed))
local counts = redis.call('HMGET', deliveries, unpack(tags))
local newcounts = {}
for j, tag in ipairs(tags) do
  counts[j] = (tonumber(counts[j]) or 0) + 1
  table.insert(newcounts, tag)
  table.insert(newcounts, counts[j])
end
redis.call('HSET', deliveries, unpack(newcounts))
local revoked = {}
if #revkeys > 0 then
  for k, v in ipairs(redis.call('MGET', unpack(revkeys))) do
    if v then revoked[revidx[k]] = 1 end
  end
end
local out = {0}
for j, m in ipairs(msgs) do
  table.insert(out, queues[j])
  if j == woke then table.insert(out, #m) else table.insert(out, m) end
  table.insert(out, tags[j])
  table.insert(out, counts[j])
  table.insert(out, revoked[j] or 0)
end
return out
