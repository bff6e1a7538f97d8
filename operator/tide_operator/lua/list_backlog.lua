-- The backlog of one list queue in one call (the operator's read; tide_operator.redis_reader).
-- KEYS: ready list, worker registry, retry set, then per registered worker (as the operator last saw the
-- registry): its processing list and its heartbeat key, then the processing lists of orphans (owners not
-- in that registry, found by the reader's occasional SCAN); all under the queue's hash tag.
-- ARGV[1]: now (seconds); ARGV[2]: how many registered workers KEYS names (default: all past the third).
-- Returns ready, registry, retries due, retries total, next retry (with score), then per worker:
-- processing length and its heartbeat's rate (a string) or false, then per orphan: processing length.
-- The fields of a heartbeat (tide_worker.records.Heartbeat): name, type, required. A heartbeat that
-- Heartbeat.decode refuses says nothing about throughput here either (tests/operator/test_backlog_contract.py
-- runs this script on heartbeats Python encodes, and on each of them broken, and compares).
local HEARTBEAT = {
  {'id', 'str', true}, {'host', 'str', true}, {'pid', 'int', true}, {'started', 'float', true},
  {'ts', 'float', true}, {'concurrency', 'int', true}, {'inflight', 'int'}, {'processed', 'int'},
  {'failed', 'int'}, {'rate', 'float'}, {'rate_window', 'float'}, {'version', 'str'},
  {'pod', 'str'}, {'namespace', 'str'}, {'oldest_started', 'float'},
}

-- The heartbeat's rate (0 when it has none), or false when the value is not a heartbeat.
local function heartbeat_rate(raw)
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' then return false end
  for _, f in ipairs(HEARTBEAT) do
    local v = doc[f[1]]
    if v == nil then
      if f[3] then return false end
    elseif f[2] == 'str' then
      if type(v) ~= 'string' then return false end
    else
      if type(v) ~= 'number' or v ~= v or v == math.huge or v == -math.huge then return false end
      if f[2] == 'int' and math.floor(v) ~= v then return false end
    end
  end
  -- as a string with every digit (Lua numbers reply as integers)
  return string.format('%.17g', doc['rate'] or 0)
end

local out = {
  redis.call('LLEN', KEYS[1]),
  redis.call('ZRANGE', KEYS[2], 0, -1),
  redis.call('ZCOUNT', KEYS[3], '-inf', ARGV[1]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1),
}
-- without ARGV[2], every key past the third is a worker's pair (no orphans)
local last = 3 + 2 * (tonumber(ARGV[2]) or math.floor((#KEYS - 3) / 2))
for i = 4, last, 2 do
  out[#out + 1] = redis.call('LLEN', KEYS[i])
  -- false when the heartbeat expired or is not one
  local hb = redis.call('GET', KEYS[i + 1])
  out[#out + 1] = hb and heartbeat_rate(hb) or false
end
for i = last + 1, #KEYS do
  out[#out + 1] = redis.call('LLEN', KEYS[i])
end
return out
