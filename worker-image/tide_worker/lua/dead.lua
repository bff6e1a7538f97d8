-- Dead-letter a message: remove it from the processing list and push its record to the dead letters.
-- KEYS[1] processing list, KEYS[2] dead list, KEYS[3] stats hash, KEYS[4] unstarted count (optional);
-- ARGV[1] raw message, ARGV[2] record.
-- A message dead-lettered unstarted (malformed) can sit among the U leftmost entries the unstarted count
-- covers: removing it would slide the next, perhaps started, entry into them, so U shrinks by one then.
-- LREM takes the copy nearest the tail: LPOS with RANK -1 finds that one (a short walk for the started
-- messages, which sit there); servers before 6.0.6 have no LPOS, so the U leftmost are searched instead
-- (over-shrinking is safe: the reaper then only counts more).
if KEYS[4] then
  local u = tonumber(redis.call("GET", KEYS[4]) or "0") or 0
  if u > 0 then
    local inside = false
    local pos = redis.pcall("LPOS", KEYS[1], ARGV[1], "RANK", -1)
    if type(pos) == "number" then
      inside = pos < u
    elseif type(pos) == "table" and pos.err then
      for _, raw in ipairs(redis.call("LRANGE", KEYS[1], 0, u - 1)) do
        if raw == ARGV[1] then
          inside = true
          break
        end
      end
    end
    if inside then redis.call("DECR", KEYS[4]) end
  end
end
local removed = redis.call("LREM", KEYS[1], -1, ARGV[1])
if removed > 0 then
  redis.call("LPUSH", KEYS[2], ARGV[2])
  redis.call("HINCRBY", KEYS[3], "dead", 1)
end
return removed
