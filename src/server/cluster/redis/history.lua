-- Reads a room's stream with its top, atomically. A room without a stream
-- gets its epoch now, so that the publications that follow are in it.
--
-- KEYS[1] the stream, KEYS[2] its meta hash
-- ARGV[1] 'latest' or 'after', ARGV[2] how many, ARGV[3] the offset to read
-- after, ARGV[4] an epoch for a new stream, ARGV[5] TTL of the stream (ms)
-- Returns {epoch, top offset, entries}; 'latest' entries newest first.
local epoch, new = current_epoch(KEYS[1], KEYS[2], ARGV[4])
if new then
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return {epoch, 0, {}}
end
local top = tonumber(redis.call('HGET', KEYS[2], 's'))
local n = tonumber(ARGV[2])
local entries = {}
if n > 0 then
  if ARGV[1] == 'latest' then
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n)
  else
    entries = redis.call('XRANGE', KEYS[1], (tonumber(ARGV[3]) + 1) .. '-0', '+', 'COUNT', n)
  end
end
return {epoch, top, entries}
