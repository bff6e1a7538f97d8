-- Take or renew a lease: granted when free or already ours. KEYS[1] lease; ARGV[1] holder, ARGV[2] TTL ms.
local holder = redis.call("GET", KEYS[1])
if holder == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return 1
