-- Newer-only write of a batch of online feature values, atomically per batch.
--
-- KEYS:    one hash per entity (prefix:tenant:group:entity).
-- ARGV[1]: write time in microseconds since the epoch (decimal string).
-- ARGV[2]: TTL of the keys in milliseconds; 0 keeps no expiry.
-- ARGV[3]: JSON array aligned with KEYS; each element lists [field, event_time_us, value_json].
--
-- A field holds "event_time_us|write_time_us|value_json". An incoming value replaces it only when
-- its event time is later, or equal with a write time not earlier: an old backfill never clobbers a
-- fresher value, and rerunning the same window refreshes it. The TTL is refreshed on every write.
-- Returns the number of values written (the rest were older than what is stored).
local write_us = ARGV[1]
local write_n = tonumber(write_us)
local ttl_ms = tonumber(ARGV[2])
local rows = cjson.decode(ARGV[3])
local written = 0
for i = 1, #KEYS do
    local key = KEYS[i]
    local fields = rows[i]
    local names = {}
    for j = 1, #fields do
        names[j] = fields[j][1]
    end
    local current = redis.call('HMGET', key, unpack(names))
    local args = {}
    for j = 1, #fields do
        local f = fields[j]
        local event_n = tonumber(f[2])
        local newer = true
        local stored = current[j]
        if stored then
            local s_event, s_write = string.match(stored, '^(%-?%d+)|(%d+)|')
            s_event = tonumber(s_event)
            s_write = tonumber(s_write)
            if s_event and (event_n < s_event or (event_n == s_event and write_n < s_write)) then
                newer = false
            end
        end
        if newer then
            args[#args + 1] = f[1]
            args[#args + 1] = f[2] .. '|' .. write_us .. '|' .. f[3]
        end
    end
    if #args > 0 then
        redis.call('HSET', key, unpack(args))
        if ttl_ms > 0 then
            redis.call('PEXPIRE', key, ttl_ms)
        end
        written = written + #args / 2
    end
end
return written
