-- Move dead letters of a stream back onto the stream, each one atomically.
-- KEYS[1] = {S}:dead (stream), KEYS[2] = S
-- ARGV[1] = the entry field producers write the envelope in ('data'),
-- ARGV[2..] = pairs of (dead-letter entry id, envelope to append)
-- An entry already deleted (by a concurrent requeue or purge) is skipped, so nothing is appended twice.
-- Returns one flag per pair: 1 moved, 0 skipped.
local flags = {}
for i = 2, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) > 0 then
    redis.call('XADD', KEYS[2], '*', ARGV[1], ARGV[i + 1])
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
return flags
