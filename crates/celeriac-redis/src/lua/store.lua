-- Result documents as Celery's Redis backend stores them: each written
-- (SETEX, or SET when results never expire) unless a SUCCESS is already
-- stored under its key, and PUBLISHed on the channel of the same name.
-- The stored documents are read with one MGET (a redis.call costs several
-- microseconds in a script); a key written earlier in the same call counts
-- as stored. Used by the backend's store script and the broker's settle.

-- Stores ARGV[from + i - 1] under keys[i], for each key, with a TTL of
-- `ttl` seconds (0: none). Returns how many were written.
local function store_results(keys, from, ttl)
  if #keys == 0 then return 0 end
  local current = redis.call('MGET', unpack(keys))
  local written = {}
  local n = 0
  for i, key in ipairs(keys) do
    local json = ARGV[from + i - 1]
    local cur = written[key] or current[i]
    local done = false
    if cur then
      local ok, d = pcall(cjson.decode, cur)
      done = ok and type(d) == 'table' and d.status == 'SUCCESS'
    end
    if not done then
      if ttl > 0 then
        redis.call('SETEX', key, ttl, json)
      else
        redis.call('SET', key, json)
      end
      redis.call('PUBLISH', key, json)
      written[key] = json
      n = n + 1
    end
  end
  return n
end
