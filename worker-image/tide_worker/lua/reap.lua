-- Return a dead worker's messages to the consumer end of the queue (oldest fetched consumed first),
-- count one interruption per message id that had started, and dead-letter ("poison") a message
-- interrupted more than ARGV[2] times, so crash loops end. Then drop the worker's processing list, its
-- unstarted count and its registry entry.
-- The worker's unstarted count U says its U leftmost (newest fetched) entries never started: they go
-- back uncounted, so the good messages fetched behind a poison pill are not dead-lettered with it. The
-- worker only ever lets U be too low (then more is counted, never less; see fetch_batch.lua).
-- KEYS[1] processing list, KEYS[2] queue, KEYS[3] interrupts hash, KEYS[4] dead list, KEYS[5] workers
-- zset, KEYS[6] heartbeat key, KEYS[7] stats hash, KEYS[8] unstarted count (optional);
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

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local cc = string.byte(s, k)
      if cc < 0x80 or cc > 0xBF then return false end
    end
    i = i + len
  end
  return true
end

-- The id the worker knows the message by (Delivery.message_id): the envelope id, else the sha1 of the bytes.
local function message_id(raw)
  if string.sub(raw, 1, 1) == "{" then
    local ok, obj = pcall(cjson.decode, raw)
    if ok and type(obj) == "table" and obj["v"] ~= nil and type(obj["id"]) == "string" and obj["id"] ~= "" then
      local attempts = obj["a"]
      if type(attempts) ~= "number" then attempts = 0 end
      return obj["id"], attempts
    end
  end
  return "sha1:" .. redis.sha1hex(raw), 0
end

local max_interrupts = tonumber(ARGV[2])
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
    local record = cjson.encode({
      message = text, encoding = encoding, reason = "poison",
      error = "interrupted " .. count .. " times by worker deaths (max " .. max_interrupts .. ")",
      queue = ARGV[5], message_id = id, attempts = attempts, worker = ARGV[1],
      time = tonumber(ARGV[4]), traceback = ""
    })
    redis.call("LPUSH", KEYS[4], record)
    redis.call("HDEL", KEYS[3], id)
    dead = dead + 1
  else
    redis.call(push, KEYS[2], raw)
    requeued = requeued + 1
  end
end
if #items > 0 then
  redis.call("EXPIRE", KEYS[3], tonumber(ARGV[6]))
  redis.call("HINCRBY", KEYS[7], "reaped", requeued)
  if dead > 0 then redis.call("HINCRBY", KEYS[7], "dead", dead) end
end
redis.call("DEL", KEYS[1])
if KEYS[8] then redis.call("DEL", KEYS[8]) end
redis.call("ZREM", KEYS[5], ARGV[1])
return {requeued, dead}
