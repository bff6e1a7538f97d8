-- Acknowledge finished messages, then move up to ARGV[1] messages from the consumer end of the queue into
-- this worker's processing list: one round trip does both (the fetcher brings the acks along), and with
-- a count of 0 it only acknowledges (the acker).
-- KEYS[1] queue, KEYS[2] processing list, KEYS[3] stats hash, KEYS[4] unstarted count, KEYS[5] the
-- queue's worker registry (read with ARGV[6] "fair"), KEYS[6] the suspects set (see below; optional),
-- KEYS[7..] dedupe markers (KEYS[i] for ARGV[i], or none); ARGV[1] count, ARGV[2] side ("right" or "left"), ARGV[3] dedupe TTL in seconds (0 = no
-- markers), ARGV[4] stats counter, ARGV[5] unstarted: "" leaves the count alone, "<n>" sets it to n +
-- the messages fetched here (0 at least) unless a requeue froze it (-1), "!<n>" sets it even then;
-- ARGV[6] "fair" (the adaptive fetch) takes at most an equal share of the queue per registered worker,
-- floor(LLEN / ZCARD registry), and at least one, "" (or none) the count as given; ARGV[7..] raw
-- messages to acknowledge (LREM).
-- The unstarted count U says the U leftmost entries of the processing list never started: the reaper
-- counts no interruption for them (see reap.lua).
-- Returns the fetched messages in consumption order (oldest first), then, as integers, the 1-based
-- positions of those that are suspects: the reaper counted them interrupted by a worker death (reap.lua
-- adds the SHA1 of each to KEYS[6]); the worker runs those one at a time, so the next death counts
-- exactly. An ack removes a message from the set. The processing list keeps the newest at its left, so
-- reaping and requeueing can restore the order.
local CHUNK = 1000  -- unpack() of more than about 8,000 values fails: Lua's stack limit
local ttl = tonumber(ARGV[3])
-- Almost always absent (only after a worker death, until its entries are acked or expire): then no hash.
local suspects = KEYS[6] and redis.call("EXISTS", KEYS[6]) == 1
for i = 7, #ARGV do
  redis.call("LREM", KEYS[2], -1, ARGV[i])
  if ttl > 0 and KEYS[i] then
    redis.call("SET", KEYS[i], "1", "EX", ttl)
  end
  if suspects then redis.call("SREM", KEYS[6], redis.sha1hex(ARGV[i])) end
end
if #ARGV > 6 then
  redis.call("HINCRBY", KEYS[3], ARGV[4], #ARGV - 6)
end
local n = tonumber(ARGV[1])
if n > 1 and ARGV[6] == "fair" then
  -- Leave every other registered worker at least as many as this one takes.
  local workers = redis.call("ZCARD", KEYS[5])
  if workers > 1 then
    local share = math.floor(redis.call("LLEN", KEYS[1]) / workers)
    if share < n then n = math.max(1, share) end
  end
end
local items = {}
if n >= 1 then
  if ARGV[2] == "left" then
    items = redis.call("LRANGE", KEYS[1], 0, n - 1)
  else
    items = redis.call("LRANGE", KEYS[1], -n, -1)
    -- LRANGE returned them newest first: reverse into consumption order.
    local i, j = 1, #items
    while i < j do
      items[i], items[j] = items[j], items[i]
      i = i + 1
      j = j - 1
    end
  end
  if #items > 0 then
    -- Into the processing list first, then off the queue: an error midway duplicates, never loses.
    for s = 1, #items, CHUNK do
      redis.call("LPUSH", KEYS[2], unpack(items, s, math.min(s + CHUNK - 1, #items)))
    end
    if ARGV[2] == "left" then
      redis.call("LTRIM", KEYS[1], #items, -1)
    else
      redis.call("LTRIM", KEYS[1], 0, -(#items + 1))
    end
  end
end
local arg = ARGV[5] or ""
if arg ~= "" and KEYS[4] then
  local force = string.sub(arg, 1, 1) == "!"
  if force then arg = string.sub(arg, 2) end
  local old = tonumber(redis.call("GET", KEYS[4]) or "0") or 0
  if force or old >= 0 then
    local u = tonumber(arg) + #items
    if u > 0 then
      redis.call("SET", KEYS[4], u)
    else
      redis.call("SET", KEYS[4], 0)
    end
  end
end
if suspects then
  local n_items = #items
  for i = 1, n_items do
    if redis.call("SISMEMBER", KEYS[6], redis.sha1hex(items[i])) == 1 then items[#items + 1] = i end
  end
end
return items
