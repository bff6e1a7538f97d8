-- Refresh a worker's liveness: registry score and heartbeat record with its TTL.
-- KEYS[1] workers zset, KEYS[2] heartbeat key; ARGV[1] worker id, ARGV[2] now, ARGV[3] record, ARGV[4] TTL ms.
redis.call("ZADD", KEYS[1], ARGV[2], ARGV[1])
redis.call("SET", KEYS[2], ARGV[3], "PX", ARGV[4])
return 1
