-- The backlog of one list queue in one call (the operator's read; tide_operator.redis_reader).
-- KEYS: ready list, worker registry, retry set, then per registered worker (as the operator last saw the
-- registry): its processing list and its heartbeat key, then the processing lists of orphans (owners not
-- in that registry, found by the reader's occasional SCAN); all under the queue's hash tag.
-- ARGV[1]: now (seconds); ARGV[2]: how many registered workers KEYS names (default: all past the third);
-- ARGV[3]: the end workers take from ('right' by default, or 'left'); ARGV[4..6]: the envelope's version,
-- most attempts and largest time (tide_worker.envelope's ENVELOPE_VERSION, MAX_ENVELOPE_ATTEMPTS, MAX_TIME).
-- Returns ready, registry, retries due, retries total, next retry (with score), the head (the message at
-- the consuming end: 't:<enqueue time>' from its envelope, 'h:<sha1 of it>' when it carries no time, or
-- false when the list is empty), then per worker: processing length and its heartbeat's figures (a
-- string: the rate and the seconds it had been idle, Heartbeat.idle_for) or false, then per orphan:
-- processing length.
-- Many queues in one call (the operator's batched reads of one server; never on Cluster, where each
-- queue's keys live in its own slot): ARGV[1] '*', ARGV[2..4] the envelope's limits, then per queue four
-- arguments: how many KEYS are its own (in the order above, queue after queue), now, its registered
-- workers, its end. Returns one reply per queue, each as above or an error reply of that queue alone (a
-- key of the wrong type fails its own queue, not the others of the call).
-- The fields of a heartbeat (tide_worker.records.Heartbeat): name, type, required. A heartbeat that
-- Heartbeat.decode refuses says nothing about throughput here either (tests/operator/test_backlog_contract.py
-- runs this script on heartbeats Python encodes, and on each of them broken, and compares).
local HEARTBEAT = {
  {'id', 'str', true}, {'host', 'str', true}, {'pid', 'int', true}, {'started', 'float', true},
  {'ts', 'float', true}, {'concurrency', 'int', true}, {'inflight', 'int'}, {'processed', 'int'},
  {'failed', 'int'}, {'rate', 'float'}, {'rate_window', 'float'}, {'version', 'str'},
  {'pod', 'str'}, {'namespace', 'str'}, {'oldest_started', 'float'}, {'idle_since', 'float'},
}

-- The heartbeat's rate (0 when it has none) and idle seconds, or false when the value is not a heartbeat.
local function heartbeat_figures(raw)
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
  local idle, since = 0, doc['idle_since'] or 0
  if since > 0 then idle = math.max(0, doc['ts'] - since) end
  -- as a string with every digit (Lua numbers reply as integers)
  return string.format('%.17g %.17g', doc['rate'] or 0, idle)
end

-- The enqueue time of a message by tide_worker.envelope.decode's rules (enqueued_time): the envelope's
-- ts, or false for a plain string, an envelope without ts, or a malformed one (decode refuses it).
local MANY = ARGV[1] == '*'
local E = MANY and 2 or 4  -- where the envelope's limits start
local ENVELOPE_VERSION = tonumber(ARGV[E]) or 1
local MAX_ATTEMPTS = tonumber(ARGV[E + 1]) or 2147483647
local MAX_TIME = tonumber(ARGV[E + 2]) or 1e15

local function finite(v)
  return type(v) == 'number' and v == v and v ~= math.huge and v ~= -math.huge
end

-- decode refuses bytes that are not UTF-8 (strict: no overlong forms, no surrogates, at most U+10FFFF)
local function utf8(raw)
  if not string.find(raw, '[\128-\255]') then return true end
  local i, n = 1, #raw
  while i <= n do
    local c = string.byte(raw, i)
    local len, lo, hi = 0, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return false end
    for j = 1, len - 1 do
      local b = string.byte(raw, i + j)
      if not b then return false end
      if j == 1 then
        if b < lo or b > hi then return false end
      elseif b < 0x80 or b > 0xBF then return false end
    end
    i = i + len
  end
  return true
end

local function enqueued_time(raw)
  -- decode takes only what starts with '{' and names "v" as a possible envelope
  if string.sub(raw, 1, 1) ~= '{' or not string.find(raw, '"v"', 1, true) then return false end
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' or doc['v'] == nil then return false end
  if doc['id'] == nil and doc['body'] == nil then return false end  -- JSON that is not an envelope
  local v, id, a, ts, h = doc['v'], doc['id'], doc['a'], doc['ts'], doc['h']
  if not finite(v) or v ~= ENVELOPE_VERSION then return false end
  if type(id) ~= 'string' or id == '' then return false end
  if doc['body'] == nil then return false end
  if a ~= nil and a ~= cjson.null then
    if not finite(a) or math.floor(a) ~= a or a < 0 or a > MAX_ATTEMPTS then return false end
  elseif a == cjson.null then
    return false  -- "a": null is not a non-negative integer
  end
  if ts == nil or ts == cjson.null then return false end
  if not finite(ts) or not (math.abs(ts) < MAX_TIME) then return false end
  -- headers: any falsy JSON value stands for none; otherwise an object
  if h ~= nil and h ~= cjson.null and h ~= false and h ~= 0 and h ~= '' then
    if type(h) ~= 'table' or #h > 0 then return false end
  end
  if not utf8(raw) then return false end
  return ts
end

local function head(key, side)
  local raw = redis.call('LINDEX', key, side == 'left' and 0 or -1)
  if not raw then return false end
  local ts = enqueued_time(raw)
  if ts then return 't:' .. string.format('%.17g', ts) end
  return 'h:' .. redis.sha1hex(raw)
end

-- One queue's reply; its keys are KEYS[first .. last].
local function backlog(first, last, now, nworkers, side)
  local out = {
    redis.call('LLEN', KEYS[first]),
    redis.call('ZRANGE', KEYS[first + 1], 0, -1),
    redis.call('ZCOUNT', KEYS[first + 2], '-inf', now),
    redis.call('ZCARD', KEYS[first + 2]),
    redis.call('ZRANGEBYSCORE', KEYS[first + 2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1),
    head(KEYS[first], side),
  }
  -- without nworkers, every key past the third is a worker's pair (no orphans)
  local pairs_end = first + 2 + 2 * (tonumber(nworkers) or math.floor((last - first - 2) / 2))
  for i = first + 3, pairs_end, 2 do
    out[#out + 1] = redis.call('LLEN', KEYS[i])
    -- false when the heartbeat expired or is not one
    local hb = redis.call('GET', KEYS[i + 1])
    out[#out + 1] = hb and heartbeat_figures(hb) or false
  end
  for i = pairs_end + 1, last do
    out[#out + 1] = redis.call('LLEN', KEYS[i])
  end
  return out
end

if not MANY then
  return backlog(1, #KEYS, ARGV[1], ARGV[2], ARGV[3])
end
local replies, first = {}, 1
for a = 5, #ARGV, 4 do
  local last = first + tonumber(ARGV[a]) - 1
  local ok, res = pcall(backlog, first, last, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  if ok then
    replies[#replies + 1] = res
  elseif type(res) == 'table' and res.err then  -- a command's error reply (Redis 7: a table)
    replies[#replies + 1] = res
  else
    replies[#replies + 1] = {err = tostring(res)}
  end
  first = last + 1
end
return replies
