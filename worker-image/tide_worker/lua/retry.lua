-- Schedule a retry: remove the message from the processing list and add its next attempt to the retry
-- set, in one step. Nothing is scheduled when the message is no longer ours (a reaper returned it to
-- the queue while its handler ran), so a retry never duplicates it.
-- KEYS[1] processing list, KEYS[2] delayed zset, KEYS[3] stats hash;
-- ARGV[1] raw message, ARGV[2] encoded next attempt, ARGV[3] due time (unix seconds).
local removed = redis.call("LREM", KEYS[1], -1, ARGV[1])
if removed > 0 then
  redis.call("ZADD", KEYS[2], ARGV[3], ARGV[2])
  redis.call("HINCRBY", KEYS[3], "retried", 1)
end
return removed
