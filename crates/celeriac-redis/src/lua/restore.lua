-- Gives back claimed messages whose holder is gone, as kombu's restore
-- does: back to the front of their queue (RPUSH), marked redelivered.
--
-- 1. Messages whose lease (their `unacked_index` score) is older than the
--    visibility timeout, whoever claimed them (kombu, or celeriac).
-- 2. With `judge` set, every message claimed by a celeriac consumer whose
--    liveness lease (`celeriac.alive.<consumer>`, renewed every few
--    seconds while its process lives) has lapsed: a killed worker's
--    messages come back in seconds, not after the visibility timeout. The
--    consumers that may hold claims are the members of `celeriac.consumers`;
--    a claim's token starts with its consumer's id. Their batch records
--    (fields of the claim table) are removed too, and what their inboxes
--    hold (a message a blocking wait moved there whose claim never ran:
--    the process was killed in between) goes back to the front of the
--    list it came from, as it was (it was never delivered).
--
-- A message whose queue's key holds something other than a list, or whose
-- entry cannot be decoded, is dead-lettered with the reason instead.
-- Nothing is done while a Python worker holds `unacked_mutex`.
--
-- KEYS: unacked, unacked_index, claims, mutex, consumers, inboxes (the
--       registry of inboxes: `<consumer id>.<n>` -> the list its wait
--       watches; the inbox itself is `<prefix>celeriac.inbox.<consumer id>.<n>`).
-- ARGV: cutoff, limit, key prefix, separator, judge (1/0), now, the
--       prefix of batch record fields in the claim table.
-- Returns {restored after the visibility timeout, restored from dead
-- consumers, dead consumers}, or {-1, 0, 0} while the mutex is held.
local unacked, index, claims, consumers, inboxes = KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6]
if redis.call('EXISTS', KEYS[4]) == 1 then return {-1, 0, 0} end
local prefix, sep, now, BATCH = ARGV[3], ARGV[4], tonumber(ARGV[6]), ARGV[7]
expect(unacked, 'hash')
expect(index, 'zset')
expect(claims, 'hash')
expect(consumers, 'set')
expect(inboxes, 'hash')

-- Puts one message back; false (changing nothing) when it can go neither
-- to its queue nor to the dead-letter store.
local function restore(tag, n)
  local raw = redis.call('HGET', unacked, tag)
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    local msg, ex, rk
    if ok and type(entry) == 'table' then msg, ex, rk = entry[1], entry[2], entry[3] end
    if (type(msg) == 'table' or type(msg) == 'string') and type(rk) == 'string' then
      local body
      local pri = 0
      if type(msg) == 'table' then
        if type(msg.headers) == 'table' then msg.headers.redelivered = true end
        if type(msg.properties) == 'table' then
          if type(msg.properties.delivery_info) == 'table' then msg.properties.delivery_info.redelivered = true end
          pri = tonumber(msg.properties.priority) or 0
        end
        body = cjson.encode(msg)
      else
        body = msg
      end
      local queues = {}
      if type(ex) ~= 'string' or ex == '' then
        queues = {rk}
      else
        for _, b in ipairs(redis.call('SMEMBERS', prefix .. '_kombu.binding.' .. ex)) do
          local brk, _, bq = string.match(b, '^(.-)' .. sep .. '(.-)' .. sep .. '(.*)$')
          if bq and (brk == rk or brk == '') then table.insert(queues, bq) end
        end
        if #queues == 0 then queues = {rk} end
      end
      local step = 0
      if pri >= 9 then step = 9 elseif pri >= 6 then step = 6 elseif pri >= 3 then step = 3 end
      local keys, bad = {}, nil
      for _, q in ipairs(queues) do
        local key = prefix .. q
        if step > 0 then key = key .. sep .. step end
        if not listable(key) then bad = key end
        table.insert(keys, key)
      end
      if bad then
        local why = 'restored, but its queue\'s key "' .. bad .. '" holds a '
          .. redis.call('TYPE', bad)['ok'] .. ', not a list'
        if not bury(prefix, queues[1], why, body, now, n) then return false end
      else
        for _, key in ipairs(keys) do redis.call('RPUSH', key, body) end
      end
    elseif not bury(prefix, '', 'restored, but its unacked entry cannot be decoded', raw, now, n) then
      return false
    end
  end
  redis.call('ZREM', index, tag)
  redis.call('HDEL', unacked, tag)
  redis.call('HDEL', claims, tag)
  return true
end

-- Gives back what a dead consumer's inbox holds: onto the front of the
-- list it came from, oldest frontmost, or to the dead-letter store when
-- that key holds something else. Returns how many, and false when some
-- could go nowhere (they stay).
local function empty_inbox(inbox, source, n)
  if not listable(inbox) then return 0, true end
  local moved = 0
  if listable(source) then
    while redis.call('LMOVE', inbox, source, 'LEFT', 'RIGHT') do moved = moved + 1 end
    return moved, true
  end
  local why = 'restored from a dead consumer\'s inbox, but its queue\'s key "' .. source
    .. '" holds a ' .. redis.call('TYPE', source)['ok'] .. ', not a list'
  while true do
    local m = redis.call('RPOP', inbox)
    if not m then return moved, true end
    if not bury(prefix, queue_of(prefix, sep, source), why, m, now, n + moved) then
      redis.call('RPUSH', inbox, m)
      return moved, false
    end
    moved = moved + 1
  end
end

local lapsed = redis.call('ZRANGEBYSCORE', index, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local done = {}
local restored, orphaned, dead = 0, 0, 0
for n, tag in ipairs(lapsed) do
  done[tag] = true
  if restore(tag, n) then restored = restored + 1 end
end

if ARGV[5] == '1' then
  local gone = {}
  for _, c in ipairs(redis.call('SMEMBERS', consumers)) do
    if redis.call('EXISTS', prefix .. 'celeriac.alive.' .. c) == 0 then
      gone[c] = true
      dead = dead + 1
    end
  end
  if dead > 0 then
    local all = redis.call('HGETALL', claims)
    local kept = false
    local records = {}
    for i = 1, #all, 2 do
      local field = all[i]
      if string.sub(field, 1, #BATCH) == BATCH then
        -- A consumer's batch record: `<BATCH><consumer id>.<n>`.
        local holder = string.match(string.sub(field, #BATCH + 1), '^([^.]*)%.')
        if holder and gone[holder] then table.insert(records, field) end
      else
        local holder = string.match(all[i + 1], '^([^:]*):')
        if holder and gone[holder] and not done[field] then
          done[field] = true
          if restore(field, #lapsed + i) then orphaned = orphaned + 1 else kept = true end
        end
      end
    end
    for _, field in ipairs(records) do redis.call('HDEL', claims, field) end
    local reg = redis.call('HGETALL', inboxes)
    for i = 1, #reg, 2 do
      local holder = string.match(reg[i], '^([^.]*)%.')
      if holder and gone[holder] then
        local moved, ok = empty_inbox(prefix .. 'celeriac.inbox.' .. reg[i], reg[i + 1], #lapsed + #all + i)
        orphaned = orphaned + moved
        if ok then redis.call('HDEL', inboxes, reg[i]) else kept = true end
      end
    end
    -- A consumer stays listed while any of its claims could not be given
    -- back, so a later pass tries again.
    if not kept then
      for c in pairs(gone) do redis.call('SREM', consumers, c) end
    end
  end
end
return {restored, orphaned, dead}
