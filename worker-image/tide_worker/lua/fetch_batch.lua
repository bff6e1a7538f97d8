-- Move up to ARGV[1] messages from the consumer end of the queue into this worker's processing list.
-- KEYS[1] queue, KEYS[2] processing list; ARGV[1] count, ARGV[2] side ("right" or "left").
-- Returns the messages in consumption order (oldest first). The processing list keeps the newest at
-- its left, so reaping and requeueing can restore the order.
local n = tonumber(ARGV[1])
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
