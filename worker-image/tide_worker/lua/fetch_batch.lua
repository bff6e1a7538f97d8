-- Acknowledge finished messages, then move up to ARGV[1] messages from the consumer end of the queue into
-- this worker's processing list: one round trip does both (the fetcher brings the acks along), and with
-- a count of 0 it only acknowledges (the acker).
-- KEYS[1] queue, KEYS[2] processing list, KEYS[3] stats hash, KEYS[4..] dedupe markers (KEYS[i - 1] for
-- ARGV[i], or none); ARGV[1] count, ARGV[2] side ("right" or "left"), ARGV[3] dedupe TTL in seconds
-- (0 = no markers), ARGV[4] stats counter, ARGV[5..] raw messages to acknowledge (LREM from the list).
-- Returns the fetched messages in consumption order (oldest first). The processing list keeps the newest
-- at its left, so reaping and requeueing can restore the order.
local ttl = tonumber(ARGV[3])
for i = 5, #ARGV do
  redis.call("LREM", KEYS[2], -1, ARGV[i])
  if ttl > 0 and KEYS[i - 1] then
    redis.call("SET", KEYS[i - 1], "1", "EX", ttl)
  end
end
if #ARGV > 4 then
  redis.call("HINCRBY", KEYS[3], ARGV[4], #ARGV - 4)
end
local n = tonumber(ARGV[1])
if n < 1 then
  return {}
end
local items
if ARGV[2] == "left" then
  items = redis.call("LRANGE", KEYS[1], 0, n - 1)
  if #items == 0 then return items end
  redis.call("LTRIM", KEYS[1], #items, -1)
else
  items = redis.call("LRANGE", KEYS[1], -n, -1)
  if #items == 0 then return items end
  redis.call("LTRIM", KEYS[1], 0, -(#items + 1))
  -- LRANGE returned them newest first: reverse into consumption order.
  local i, j = 1, #items
  while i < j do
    items[i], items[j] = items[j], items[i]
    i = i + 1
    j = j - 1
  end
end
redis.call("LPUSH", KEYS[2], unpack(items))
return items
