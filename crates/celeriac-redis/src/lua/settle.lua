-- Settles a batch of finished tasks in one step, when the result backend
-- is this broker's own Redis (same server and database): stores their
-- results, joins their chord header parts, then acknowledges their
-- messages (runs after lua/prelude.lua, lua/store.lua, lua/chord_join.lua).
-- Nothing runs in between, so no message is acked without its result, and
-- a part is acked only once joined (counted once: K.d). The parts of a
-- chord this batch completes are not acked: the worker sends the chord's
-- body, then acks them, so that a worker that dies first leaves a part to
-- come back and complete the chord.
--
-- KEYS: the result keys (ARGV[4] of them), then K.j, K.t, K.s, K.d, K.c of
--       each chord (ARGV[5] chords), then unacked, unacked_index, claims,
--       deliveries.
-- ARGV: result ttl, chord claim ttl, chord claim token, number of
--       results, number of chords, then one json per result, then for each
--       chord its number of parts n and n × (task id, part record, index
--       score, the number of its message in the acks), then tag, claim
--       token of each message to ack.
-- Returns {codes, completed}: for each message, 1 acked, 0 held by
-- another claim, 2 held by nobody (already acked, or given back), 3 held
-- back (its chord completes); for each chord, its parts in index order if
-- this batch completes it, else an empty list.
local ttl, claim_ttl, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local nresults, nchords = tonumber(ARGV[4]), tonumber(ARGV[5])
local base = nresults + 5 * nchords
local unacked, index, claims, deliveries = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4]

-- Where each chord's parts are in ARGV, and where the acks start.
local chords = {}
local a = 6 + nresults
for c = 1, nchords do
  local n = tonumber(ARGV[a])
  chords[c] = {from = a + 1, n = n}
  a = a + 1 + 4 * n
end
local tags, held = {}, {}
for i = a, #ARGV, 2 do tags[#tags + 1] = ARGV[i] end

-- Check before any change: the claim table's type by its read, the other
-- bookkeeping keys with TYPE (Redis does not roll back a script that fails
-- half-way). The chord keys are not checked: a join that fails after the
-- results are stored loses nothing (the worker settles the batch again
-- with separate calls; every step is safe to repeat).
if #tags > 0 then
  held = redis.call('HMGET', claims, unpack(tags))
  expect(unacked, 'hash')
  expect(index, 'zset')
  expect(deliveries, 'hash')
end

-- 1. The results.
local keys = {}
for i = 1, nresults do keys[i] = KEYS[i] end
store_results(keys, 6, ttl)

-- 2. The chord parts, one join per chord (its parts are 4 arguments
-- each here: the three join_chord reads, then the number of its message).
local completed, back = {}, {}
for c, ch in ipairs(chords) do
  local k = {}
  for x = 1, 5 do k[x] = KEYS[nresults + 5 * (c - 1) + x] end
  local last = ch.from + 4 * ch.n - 1
  local all = join_chord(k, ttl, claim_ttl, token, ARGV, ch.from, last, 4)
  if all then
    completed[c] = all
    for at = ch.from + 3, last, 4 do back[tonumber(ARGV[at])] = true end
  else
    completed[c] = {}
  end
end

-- 3. The acks, of the messages still held under their claim.
local mine, codes = {}, {}
for j, tag in ipairs(tags) do
  if back[j] then
    codes[j] = 3
  elseif held[j] == ARGV[a + 2 * j - 1] then
    mine[#mine + 1] = tag
    codes[j] = 1
  elseif held[j] then
    codes[j] = 0
  else
    codes[j] = 2
  end
end
if #mine > 0 then
  redis.call('HDEL', unacked, unpack(mine))
  redis.call('ZREM', index, unpack(mine))
  redis.call('HDEL', claims, unpack(mine))
  redis.call('HDEL', deliveries, unpack(mine))
end
return {codes, completed}
