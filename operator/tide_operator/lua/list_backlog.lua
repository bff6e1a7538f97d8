-- The backlog of one list queue in one call (the operator's read; tide_operator.redis_reader).
-- KEYS: ready list, worker registry, retry set, then per registered worker (as the operator last saw the
-- registry): its processing list and its heartbeat key, then the processing lists of orphans (owners not
-- in that registry, found by the reader's occasional SCAN); all under the queue's hash tag.
-- ARGV[1]: now (seconds); ARGV[2]: how many registered workers KEYS names.
-- Returns ready, registry, retries due, retries total, next retry (with score), then per worker:
-- processing length and its heartbeat's rate (a string) or false, then per orphan: processing length.
local out = {
  redis.call('LLEN', KEYS[1]),
  redis.call('ZRANGE', KEYS[2], 0, -1),
  redis.call('ZCOUNT', KEYS[3], '-inf', ARGV[1]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1),
}
local last = 3 + 2 * tonumber(ARGV[2])
for i = 4, last, 2 do
  out[#out + 1] = redis.call('LLEN', KEYS[i])
  -- the heartbeat's rate, decoded here (as a string: Lua numbers reply as integers); false when the
  -- heartbeat expired or says nothing readable about throughput
  local rate = false
  local hb = redis.call('GET', KEYS[i + 1])
  if hb then
    local ok, doc = pcall(cjson.decode, hb)
    if ok and type(doc) == 'table' then
      local r = doc['rate']
      if r == nil then r = 0 end
      r = tonumber(r)
      if r then rate = tostring(r) end
    end
  end
  out[#out + 1] = rate
end
for i = last + 1, #KEYS do
  out[#out + 1] = redis.call('LLEN', KEYS[i])
end
return out
