-- Move dead letters of a list queue back to its producer end, each one atomically.
-- KEYS[1] = {Q}:dead (list), KEYS[2] = Q (the ready list)
-- ARGV[1] = 'LPUSH' or 'RPUSH' (the end opposite the workers'), ARGV[2..] = pairs of
--           (the dead-letter record exactly as stored, the message to push back)
-- A record that is gone (requeued or purged by someone else meanwhile) is skipped, so a message is
-- never pushed twice. LREM counts from the tail, where the caller reads its batches: O(1) per message.
-- Returns one flag per pair: 1 moved, 0 skipped.
local push = ARGV[1]
if push ~= 'LPUSH' and push ~= 'RPUSH' then
  return redis.error_reply('push must be LPUSH or RPUSH')
end
local flags = {}
for i = 2, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) > 0 then
    redis.call(push, KEYS[2], ARGV[i + 1])
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
return flags
