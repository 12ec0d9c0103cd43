-- Shared by publish.lua and history.lua (prepended to each).
--
-- The epoch of a room's stream, as its meta hash has it (e: epoch, s: top
-- offset, b: bytes kept, r: the replication id of the server that last wrote
-- it). A new stream (or one whose meta was lost) starts with `fresh`, and
-- what is left of an old one goes. A stream last written under another
-- replication id is on a replica promoted since (a failover): Redis
-- replicates asynchronously, so the old master's last writes may be missing
-- here and their offsets could be given out again. Its epoch changes, so no
-- client takes what follows for what it had.
-- Returns the epoch, and whether the stream is new.
local function current_epoch(stream, meta, fresh)
  local info = redis.call('INFO', 'replication')
  local replid = string.match(info, 'master_replid:(%x+)') or ''
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', fresh, 's', 0, 'b', 0, 'r', replid)
    return fresh, true
  end
  local was = redis.call('HGET', meta, 'r')
  if was ~= replid then
    if was then
      epoch = fresh
    end
    redis.call('HSET', meta, 'e', epoch, 'r', replid)
  end
  return epoch, false
end
