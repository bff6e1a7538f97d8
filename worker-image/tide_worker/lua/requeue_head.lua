-- Return messages this worker holds to the consumer end of the queue, so they are consumed next and in
-- their original order. KEYS[1] processing list, KEYS[2] queue;
-- ARGV[1] side, ARGV[2..] raw messages in consumption order (oldest first).
-- With no messages given, the whole processing list goes back (oldest fetched first), then is deleted.
local side = ARGV[1]
local push = (side == "left") and "LPUSH" or "RPUSH"
if #ARGV < 2 then
  -- The list holds the newest fetched at its left: pushing left to right leaves the oldest at the end.
  local items = redis.call("LRANGE", KEYS[1], 0, -1)
  for _, raw in ipairs(items) do
    redis.call(push, KEYS[2], raw)
  end
  redis.call("DEL", KEYS[1])
  return #items
end
local moved = 0
for i = #ARGV, 2, -1 do
  if redis.call("LREM", KEYS[1], -1, ARGV[i]) > 0 then
    redis.call(push, KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
return moved
