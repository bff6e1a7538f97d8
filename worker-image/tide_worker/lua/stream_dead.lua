-- Dead-letter a stream entry: add the record to the dead-letter stream and acknowledge the entry, once.
-- KEYS[1] stream, KEYS[2] dead stream, KEYS[3] stats hash; ARGV[1] group, ARGV[2] entry id,
-- ARGV[3..] field/value pairs of the record.
local pending = redis.call("XPENDING", KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then return 0 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call("XADD", KEYS[2], "*", unpack(fields))
redis.call("XACK", KEYS[1], ARGV[1], ARGV[2])
redis.call("HINCRBY", KEYS[3], "dead", 1)
return 1
