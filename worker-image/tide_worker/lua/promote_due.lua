-- Move retries whose due time has come from the retry set to the producer end of the queue.
-- KEYS[1] delayed zset, KEYS[2] queue; ARGV[1] now (unix seconds), ARGV[2] limit, ARGV[3] side.
-- Chunks keep unpack() within Lua's stack limit (about 8,000 values), whatever the limit; each chunk is
-- pushed before it leaves the retry set, so an error midway can duplicate a retry but never lose one.
local CHUNK = 1000
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
local push = (ARGV[3] == "left") and "RPUSH" or "LPUSH"
for s = 1, #due, CHUNK do
  local e = math.min(s + CHUNK - 1, #due)
  redis.call(push, KEYS[2], unpack(due, s, e))
  redis.call("ZREM", KEYS[1], unpack(due, s, e))
end
return #due
