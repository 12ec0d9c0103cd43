-- A member has no connection in a room on one instance any more.
--
-- KEYS as presence_enter.lua.
-- ARGV[1] user id, ARGV[2] instance, ARGV[3] the end of the grace (ms), or
-- '' to remove the entry now
-- Returns 1 when the member is now present nowhere.
local entry = ARGV[1] .. '|' .. ARGV[2]
if ARGV[3] ~= '' then
  -- Kept until the grace ends; a sweep removes it then.
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], entry)
  return 0
end
if redis.call('ZREM', KEYS[1], entry) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
    redis.call('HDEL', KEYS[3], ARGV[1])
    return 1
  end
end
return 0
