-- Return messages this worker holds to the consumer end of the queue in one atomic call, so they are
-- consumed next and in the order they were fetched: the queue's head then reads as it did before the
-- fetches. The order comes from the processing list (newest fetched at its left), not from ARGV.
-- KEYS[1] processing list, KEYS[2] queue, KEYS[3] unstarted count (optional: frozen at -1, since
-- entries leave the list from among the leftmost, and a fetch sent earlier may still land; see
-- fetch_batch.lua);
-- ARGV[1] side; ARGV[2] mode: "only" returns the messages named in ARGV[3..], "except" returns every
-- message of the list but those named (none named: the whole list). Names are a multiset: a raw named
-- twice matches two identical copies. Returns how many went back.
local push = (ARGV[1] == "left") and "LPUSH" or "RPUSH"
local only = ARGV[2] == "only"
local named = {}
for i = 3, #ARGV do
  named[ARGV[i]] = (named[ARGV[i]] or 0) + 1
end
if KEYS[3] then
  redis.call("SET", KEYS[3], -1)
end
local items = redis.call("LRANGE", KEYS[1], 0, -1)
-- Identical copies are told apart by position: the started ones are the older, so names match the oldest
-- copies when they are the started ("except") and the newest when they are the unstarted ("only").
local hit = {}
local first, last, step = #items, 1, -1
if only then
  first, last, step = 1, #items, 1
end
for i = first, last, step do
  local n = named[items[i]]
  if n and n > 0 then
    named[items[i]] = n - 1
    hit[i] = true
  end
end
local back, keep = {}, {}
for i = 1, #items do
  if (hit[i] == true) == only then
    back[#back + 1] = items[i]
  else
    keep[#keep + 1] = items[i]
  end
end
if #back == 0 then
  return 0
end
-- back and keep are newest first, as in the list. Pushing newest first leaves the oldest at the consumer
-- end (for RPUSH and LPUSH alike); chunks keep unpack() within Lua's stack limit.
local CHUNK = 1000
local function push_all(cmd, key, list)
  for s = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, s, math.min(s + CHUNK - 1, #list)))
  end
end
push_all(push, KEYS[2], back)
redis.call("DEL", KEYS[1])
push_all("RPUSH", KEYS[1], keep)
return #back
