-- Leave the registry on a clean exit, but only once the processing list is empty (else the reaper must
-- still find it). KEYS[1] processing list, KEYS[2] workers zset, KEYS[3] heartbeat key,
-- KEYS[4] unstarted count (optional); ARGV[1] worker id.
if redis.call("LLEN", KEYS[1]) > 0 then return 0 end
redis.call("ZREM", KEYS[2], ARGV[1])
redis.call("DEL", KEYS[3])
if KEYS[4] then redis.call("DEL", KEYS[4]) end
return 1
