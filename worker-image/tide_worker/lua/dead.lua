-- Dead-letter a message: remove it from the processing list and push its record to the dead letters.
-- KEYS[1] processing list, KEYS[2] dead list, KEYS[3] stats hash; ARGV[1] raw message, ARGV[2] record.
local removed = redis.call("LREM", KEYS[1], -1, ARGV[1])
if removed > 0 then
  redis.call("LPUSH", KEYS[2], ARGV[2])
  redis.call("HINCRBY", KEYS[3], "dead", 1)
end
return removed
