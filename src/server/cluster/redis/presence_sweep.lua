-- Renews one instance's entries in a room and removes every expired entry.
--
-- KEYS as presence_enter.lua.
-- ARGV[1] now (ms), ARGV[2] instance, ARGV[3] new expiry (ms),
-- ARGV[4] TTL of the keys (ms), then pairs of user id and name present here
-- Returns {user, name, ...}: the members now present nowhere.
for i = 5, #ARGV, 2 do
  local user = ARGV[i]
  if redis.call('ZADD', KEYS[1], ARGV[3], user .. '|' .. ARGV[2]) == 1 then
    -- Lost meanwhile (Redis restarted): back, without telling anyone.
    redis.call('HINCRBY', KEYS[2], user, 1)
  end
  redis.call('HSET', KEYS[3], user, ARGV[i + 1])
end
local gone = {}
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])) do
  redis.call('ZREM', KEYS[1], entry)
  local user = string.match(entry, '^(.*)|')
  if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
    gone[#gone + 1] = user
    gone[#gone + 1] = redis.call('HGET', KEYS[3], user) or ''
    redis.call('HDEL', KEYS[2], user)
    redis.call('HDEL', KEYS[3], user)
  end
end
if #ARGV > 4 then
  for i = 1, 3 do
    redis.call('PEXPIRE', KEYS[i], ARGV[4])
  end
end
return gone
