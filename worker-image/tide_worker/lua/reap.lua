-- Return a dead worker's messages to the consumer end of the queue (oldest fetched consumed first),
-- count one interruption per message id that had started, and dead-letter ("poison") a message
-- interrupted more than ARGV[2] times, so crash loops end. Then drop the worker's processing list, its
-- unstarted count and its registry entry.
-- The worker's unstarted count U says its U leftmost (newest fetched) entries never started: they go
-- back uncounted, so the good messages fetched behind a poison pill are not dead-lettered with it. The
-- worker only ever lets U be too low (then more is counted, never less; see fetch_batch.lua).
-- KEYS[1] processing list, KEYS[2] queue, KEYS[3] interrupts hash, KEYS[4] dead list, KEYS[5] workers
-- zset, KEYS[6] heartbeat key, KEYS[7] stats hash, KEYS[8] unstarted count (optional), KEYS[9] suspects
-- set (optional: the SHA1 of each counted message put back, so a fetch runs it alone; fetch_batch.lua);
-- ARGV[1] worker id, ARGV[2] max interrupts, ARGV[3] side, ARGV[4] now, ARGV[5] queue name,
-- ARGV[6] interrupts TTL in seconds. Returns {requeued, dead}; {-1, 0} when the worker is alive.
if redis.call("EXISTS", KEYS[6]) == 1 then return {-1, 0} end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = string.byte(data, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = string.sub(b64chars, c1 + 1, c1 + 1) .. string.sub(b64chars, c2 + 1, c2 + 1)
      .. (b and string.sub(b64chars, c3 + 1, c3 + 1) or "=") .. (c and string.sub(b64chars, c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

-- Whether s is UTF-8 as Python's strict decoder reads it (no overlong forms, surrogates or code points past
-- U+10FFFF): the record says "utf-8" exactly when DeadLetter.for_raw would.
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF  -- the range of the second byte
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c == 0xE0 then len, lo = 3, 0xA0
    elseif c == 0xED then len, hi = 3, 0x9F
    elseif c >= 0xE1 and c <= 0xEF then len = 3
    elseif c == 0xF0 then len, lo = 4, 0x90
    elseif c == 0xF4 then len, hi = 4, 0x8F
    elseif c >= 0xF1 and c <= 0xF3 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local cc = string.byte(s, k)
      if k == i + 1 then
        if cc < lo or cc > hi then return false end
      elseif cc < 0x80 or cc > 0xBF then return false end
    end
    i = i + len
  end
  return true
end

local function is_int(x, max)
  return type(x) == "number" and math.floor(x) == x and x >= 0 and x <= max
end

-- The id and attempts the worker knows the message by (Delivery.message_id, Message.attempts), by the
-- rules of envelope.decode: a valid envelope's id and attempts; else (plain text, JSON that is not an
-- envelope, a malformed envelope, bytes that are not UTF-8) the sha1 of the bytes and 0.
-- (cjson reads 1.0 as 1, so "v": 1.0 or "a": 2.0, which Python refuses, pass here; no producer writes them.)
local function message_id(raw)
  local plain = "sha1:" .. redis.sha1hex(raw)
  if not valid_utf8(raw) or string.sub(raw, 1, 1) ~= "{" or not string.find(raw, '"v"', 1, true) then
    return plain, 0
  end
  local ok, obj = pcall(cjson.decode, raw)
  if not ok or type(obj) ~= "table" or obj["v"] == nil or (obj["id"] == nil and obj["body"] == nil) then
    return plain, 0  -- not an envelope: consumed as a plain body
  end
  local id, attempts, ts, h = obj["id"], obj["a"], obj["ts"], obj["h"]
  if attempts == nil then attempts = 0 end
  if obj["v"] ~= 1 or type(id) ~= "string" or id == "" or not valid_utf8(id) or obj["body"] == nil
    or not is_int(attempts, 2147483647)
    or (ts ~= nil and ts ~= cjson.null and not (type(ts) == "number" and math.abs(ts) < 1e15))
    or (h ~= nil and h ~= cjson.null and h ~= false and h ~= 0 and h ~= ""
        and not (type(h) == "table" and type(next(h)) ~= "number")) then
    return plain, 0  -- a malformed envelope
  end
  return id, attempts
end

local max_interrupts = tonumber(ARGV[2])
local now_json = ARGV[4]  -- as Python's repr wrote it: every digit (else printed with 17)
if not (string.find(now_json, "^%-?%d+$") or string.find(now_json, "^%-?%d+%.%d+$")
    or string.find(now_json, "^%-?%d+%.?%d*[eE][-+]?%d+$")) then
  now_json = string.format("%.17g", tonumber(now_json) or 0)
end
local push = (ARGV[3] == "left") and "LPUSH" or "RPUSH"
local items = redis.call("LRANGE", KEYS[1], 0, -1)
local unstarted = 0
if KEYS[8] then
  unstarted = tonumber(redis.call("GET", KEYS[8]) or "0") or 0  -- -1 (frozen) counts as 0
end
local requeued, dead = 0, 0
for i, raw in ipairs(items) do
  local count = 0
  local id, attempts
  if i > unstarted then
    id, attempts = message_id(raw)
    count = redis.call("HINCRBY", KEYS[3], id, 1)
  end
  if count > max_interrupts then
    local text, encoding = raw, "utf-8"
    if not valid_utf8(raw) then
      text, encoding = base64(raw), "base64"
    end
    -- the fields of a DeadLetter (tide_worker.records); cjson writes numbers with 14 digits, so the time
    -- goes in as the caller wrote it (a JSON number) in place of a placeholder only the key can match
    local record = cjson.encode({
      message = text, encoding = encoding, reason = "poison",
      error = "interrupted " .. count .. " times by worker deaths (max " .. max_interrupts .. ")",
      queue = ARGV[5], message_id = id, attempts = attempts, worker = ARGV[1],
      time = -1, traceback = ""
    })
    record = string.gsub(record, '"time":%-1', '"time":' .. now_json, 1)
    redis.call("LPUSH", KEYS[4], record)
    redis.call("HDEL", KEYS[3], id)
    if KEYS[9] then redis.call("SREM", KEYS[9], redis.sha1hex(raw)) end
    dead = dead + 1
  else
    redis.call(push, KEYS[2], raw)
    requeued = requeued + 1
    if count > 0 and KEYS[9] then redis.call("SADD", KEYS[9], redis.sha1hex(raw)) end
  end
end
if #items > 0 then
  redis.call("EXPIRE", KEYS[3], tonumber(ARGV[6]))
  if KEYS[9] and redis.call("EXISTS", KEYS[9]) == 1 then redis.call("EXPIRE", KEYS[9], tonumber(ARGV[6])) end
  redis.call("HINCRBY", KEYS[7], "reaped", requeued)
  if dead > 0 then redis.call("HINCRBY", KEYS[7], "dead", dead) end
end
redis.call("DEL", KEYS[1])
if KEYS[8] then redis.call("DEL", KEYS[8]) end
redis.call("ZREM", KEYS[5], ARGV[1])
return {requeued, dead}
