-- Acknowledge stream entries, optionally marking their message ids done.
-- KEYS[1] stream, KEYS[2] stats hash, KEYS[3..] dedupe markers (one per entry, or none);
-- ARGV[1] group, ARGV[2] dedupe TTL seconds (0 = none), ARGV[3] counter name, ARGV[4..] entry ids.
local ttl = tonumber(ARGV[2])
local ids = {}
for i = 4, #ARGV do
  ids[#ids + 1] = ARGV[i]
  if ttl > 0 and KEYS[i - 1] then
    redis.call("SET", KEYS[i - 1], "1", "EX", ttl)
  end
end
if #ids == 0 then return 0 end
redis.call("HINCRBY", KEYS[2], ARGV[3], #ids)
return redis.call("XACK", KEYS[1], ARGV[1], unpack(ids))
