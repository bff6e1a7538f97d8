-- Which of KEYS exist (dedupe markers of one queue share a slot): one flag per key.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call("EXISTS", key)
end
return out
