-- Marks a member present in a room on one instance.
--
-- KEYS[1] entries (sorted set of 'user|instance' by expiry, ms),
-- KEYS[2] holders (hash: user -> live entries), KEYS[3] names (hash: user -> name)
-- ARGV[1] user id, ARGV[2] instance, ARGV[3] name, ARGV[4] expiry (ms),
-- ARGV[5] TTL of the keys (ms)
-- Returns {first (0/1), user, name, user, name, ...}: first is 1 when the
-- member was present nowhere before.
local first = 0
if redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1] .. '|' .. ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], 1) == 1 then
    first = 1
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[5])
end
local result = {first}
local names = redis.call('HGETALL', KEYS[3])
for i = 1, #names do
  result[i + 1] = names[i]
end
return result
