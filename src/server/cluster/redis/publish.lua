-- Appends one publication to a room's stream and publishes it, atomically,
-- so that the offset order is the order every subscriber receives.
--
-- KEYS[1] the stream, KEYS[2] its meta hash (see epoch.lua), KEYS[3] the
--         idempotency key (unused if ARGV[6] is 0)
-- ARGV[1] the data, ARGV[2] most publications kept, ARGV[3] most bytes kept,
-- ARGV[4] TTL of the stream (ms), ARGV[5] the room's channel,
-- ARGV[6] dedup window (ms, 0: no key), ARGV[7] an epoch for a new stream,
-- ARGV[8] the publish command (PUBLISH or SPUBLISH)
-- Returns {epoch, offset, duplicate (0/1)}.
if ARGV[6] ~= '0' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, sep - 1), tonumber(string.sub(seen, sep + 1)), 1}
  end
end
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[7])
local offset = redis.call('HINCRBY', KEYS[2], 's', 1)
redis.call('XADD', KEYS[1], offset .. '-0', 'd', ARGV[1])
local len = redis.call('XLEN', KEYS[1])
local bytes
if len == 1 then
  -- The stream was empty (new, expired or evicted): count afresh.
  bytes = string.len(ARGV[1])
  redis.call('HSET', KEYS[2], 'b', bytes)
else
  bytes = redis.call('HINCRBY', KEYS[2], 'b', string.len(ARGV[1]))
end
-- Trimmed in batches, oldest first, always keeping the newest: once over
-- the count by a sixteenth (or over the bytes), down to the count and to
-- fifteen sixteenths of the bytes, so that most publishes trim nothing.
local most, most_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
if len > most + math.floor(most / 16) or bytes > most_bytes then
  local keep_bytes = most_bytes - math.floor(most_bytes / 16)
  local gone, last = 0, nil
  while len > 1 and (len > most or bytes > keep_bytes) do
    local batch = redis.call('XRANGE', KEYS[1], last and ('(' .. last) or '-', '+', 'COUNT', 64)
    if #batch == 0 then
      break
    end
    for _, entry in ipairs(batch) do
      if len <= 1 or (len <= most and bytes <= keep_bytes) then
        break
      end
      bytes = bytes - string.len(entry[2][2])
      len = len - 1
      gone = gone + 1
      last = entry[1]
    end
  end
  if gone > 0 then
    -- Every entry up to the last one counted goes, in one command.
    local through = tonumber(string.match(last, '^(%d+)'))
    redis.call('XTRIM', KEYS[1], 'MINID', (through + 1) .. '-0')
    redis.call('HSET', KEYS[2], 'b', bytes)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[8], ARGV[5], 'p|' .. epoch .. '|' .. offset .. '|' .. ARGV[1])
if ARGV[6] ~= '0' then
  redis.call('SET', KEYS[3], epoch .. ':' .. offset, 'PX', ARGV[6])
end
return {epoch, offset, 0}
