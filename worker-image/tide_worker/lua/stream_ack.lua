-- Acknowledge stream entries, optionally marking their message ids done.
-- KEYS[1] stream, KEYS[2] stats hash, KEYS[3..] dedupe markers (one per entry, or none);
-- ARGV[1] group, ARGV[2] dedupe TTL seconds (0 = none), ARGV[3] counter name, ARGV[4..] entry ids.
-- XACK goes in chunks: unpack() of more than about 8,000 values fails (Lua's stack limit).
local CHUNK = 1000
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
local acked = 0
for s = 1, #ids, CHUNK do
  acked = acked + redis.call("XACK", KEYS[1], ARGV[1], unpack(ids, s, math.min(s + CHUNK - 1, #ids)))
end
return acked
