-- The fenced publish of a beat group: if the token still holds the lease,
-- pushes each run's message onto its queue list (as kombu publishes) and
-- records its slot as the entry's last run; a run whose entry already has
-- this slot or a later one is skipped.
-- KEYS: lock, state (HASH entry -> last slot in ms), then the list keys.
-- ARGV: token, then per run: entry, slot ms, index of its list key in KEYS
-- (0 to record the slot only), payload.
-- Returns false when the token does not hold the lease (nothing changed),
-- else one 1 (applied) or 0 (skipped) per run.
expect(KEYS[1], 'string')
expect(KEYS[2], 'hash')
for i = 3, #KEYS do
  if not listable(KEYS[i]) then refuse(KEYS[i], redis.call('TYPE', KEYS[i])['ok'], 'list') end
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local done = {}
for i = 2, #ARGV, 4 do
  local slot, list = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local last = tonumber(redis.call('HGET', KEYS[2], ARGV[i]))
  if last == nil or slot > last then
    if list > 0 then redis.call('LPUSH', KEYS[list], ARGV[i + 3]) end
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
end
return done
