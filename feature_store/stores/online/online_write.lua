-- Write a batch of online feature values atomically, so that online = the latest valid offline value.
--
-- KEYS:    one hash per entity (prefix:tenant:group:entity).
-- ARGV[1]: write time in microseconds since the epoch (decimal string).
-- ARGV[2]: TTL of the keys in milliseconds; 0 keeps no expiry.
-- ARGV[3]: start of the window being replaced, event-time microseconds ("" for none).
-- ARGV[4]: end of that window ("" for none).
-- ARGV[5]: "1" to overwrite whatever is stored (an audited corrective rerun), else "0".
-- ARGV[6]: JSON array aligned with KEYS; each element lists [field, event_time_us, value_json] to
--          write, or [field] to remove the stored value.
--
-- A field holds "event_time_us|write_time_us|value_json". An incoming value replaces the stored one
-- when it is newer (later event time, or equal with a write time not earlier), or when the stored
-- one lies inside the window being replaced (that window was recomputed, so its old values are
-- stale, and an entity whose latest value disappeared falls back to its previous one). A removal
-- only removes a value inside that window. An old backfill therefore never clobbers a value of a
-- later window. The TTL is refreshed on every write.
-- Returns the number of values written or removed.
local write_us = ARGV[1]
local write_n = tonumber(write_us)
local ttl_ms = tonumber(ARGV[2])
local window_start = tonumber(ARGV[3])
local window_end = tonumber(ARGV[4])
local force = ARGV[5] == '1'
local rows = cjson.decode(ARGV[6])
local changed = 0
for i = 1, #KEYS do
    local key = KEYS[i]
    local fields = rows[i]
    local names = {}
    for j = 1, #fields do
        names[j] = fields[j][1]
    end
    local current = redis.call('HMGET', key, unpack(names))
    local sets = {}
    local removals = {}
    for j = 1, #fields do
        local f = fields[j]
        local stored = current[j]
        local s_event, s_write
        if stored then
            s_event, s_write = string.match(stored, '^(%-?%d+)|(%d+)|')
            s_event = tonumber(s_event)
            s_write = tonumber(s_write)
        end
        local in_window = s_event and window_start and s_event > window_start and s_event <= window_end
        if #f == 1 then
            if stored and (force or in_window) then
                removals[#removals + 1] = f[1]
            end
        else
            local event_n = tonumber(f[2])
            local take = force or not s_event or in_window
                or event_n > s_event or (event_n == s_event and write_n >= s_write)
            if take then
                sets[#sets + 1] = f[1]
                sets[#sets + 1] = f[2] .. '|' .. write_us .. '|' .. f[3]
            end
        end
    end
    if #removals > 0 then
        redis.call('HDEL', key, unpack(removals))
        changed = changed + #removals
    end
    if #sets > 0 then
        redis.call('HSET', key, unpack(sets))
        if ttl_ms > 0 then
            redis.call('PEXPIRE', key, ttl_ms)
        end
        changed = changed + #sets / 2
    end
end
return changed
