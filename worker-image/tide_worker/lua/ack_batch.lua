-- Acknowledge finished messages: remove each from the processing list, optionally mark its id done.
-- KEYS[1] processing list, KEYS[2] stats hash, KEYS[3..] dedupe markers (one per message, or none);
-- ARGV[1] dedupe TTL in seconds (0 = no markers), ARGV[2] counter name, ARGV[3..] raw messages.
local ttl = tonumber(ARGV[1])
local removed = 0
for i = 3, #ARGV do
  removed = removed + redis.call("LREM", KEYS[1], -1, ARGV[i])
  if ttl > 0 and KEYS[i] then
    redis.call("SET", KEYS[i], "1", "EX", ttl)
  end
end
if #ARGV > 2 then
  redis.call("HINCRBY", KEYS[2], ARGV[2], #ARGV - 2)
end
return removed
