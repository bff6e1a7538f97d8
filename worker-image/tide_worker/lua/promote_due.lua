-- Move retries whose due time has come from the retry set to the producer end of the queue.
-- KEYS[1] delayed zset, KEYS[2] queue; ARGV[1] now (unix seconds), ARGV[2] limit, ARGV[3] side.
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
redis.call("ZREM", KEYS[1], unpack(due))
if ARGV[3] == "left" then
  redis.call("RPUSH", KEYS[2], unpack(due))
else
  redis.call("LPUSH", KEYS[2], unpack(due))
end
return #due
