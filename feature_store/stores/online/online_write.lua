-- Write a batch of online feature values atomically, so that online = the latest valid offline value.
--
-- KEYS:    one hash per entity.
-- ARGV[1]: write time in microseconds since the epoch (decimal string).
-- ARGV[2]: TTL of the keys in milliseconds; 0 keeps no expiry.
-- ARGV[3]: start of the window being replaced, event-time microseconds ("" for none).
-- ARGV[4]: end of that window ("" for none).
-- ARGV[5]: "1" to overwrite whatever is stored (an audited corrective rerun), else "0".
-- ARGV[6]: MessagePack array aligned with KEYS; each element is one entity's flat list
--          [oldest_event_us, newest_event_us, has_removals (0|1), field, stored, field, stored, ...]
--          (the event times "" when it only removes values)
--          where `stored` is the field's new value "event_time_us|write_time_us|value_json" (built by the
--          caller with the write time of ARGV[1]), or "" to remove the stored value. Flat, so that the
--          usual write passes the list on to HSET as it came (no table built per entity).
--
-- A field holds "event_time_us|write_time_us|value_json"; the field "~" holds
-- "latest_event_time_us|latest_write_time_us" over every value written to the hash. An incoming value
-- replaces the stored one when it is newer (later event time, or equal with a write time not earlier),
-- or when the stored one lies inside the window being replaced (that window was recomputed, so its old
-- values are stale, and an entity whose latest value disappeared falls back to its previous one). A
-- removal only removes a value inside that window. An old backfill therefore never clobbers a value of
-- a later window.
--
-- Fast path: when every incoming value is newer than anything "~" says is stored (the usual hourly
-- run), all of them win without reading the stored ones. The TTL is refreshed on every write.
-- Returns the number of values written or removed.
local write_us = ARGV[1]
local write_n = tonumber(write_us)
local ttl_text = ARGV[2]  -- passed on as it came: a Lua number would be formatted per call
local ttl_ms = tonumber(ttl_text)
local window_start = tonumber(ARGV[3])
local window_end = tonumber(ARGV[4])
local force = ARGV[5] == '1'
local rows = cmsgpack.unpack(ARGV[6])
local changed = 0
for i = 1, #KEYS do
    local key = KEYS[i]
    local entity = rows[i]
    local last = #entity
    local oldest, newest_text, removals_in = tonumber(entity[1]), entity[2], entity[3] == 1
    local summary = redis.call('HGET', key, '~')
    local latest, latest_write, latest_text, latest_write_text
    if summary then
        latest_text, latest_write_text = string.match(summary, '^(%-?%d+)|(%d+)$')
        latest, latest_write = tonumber(latest_text), tonumber(latest_write_text)
    end
    local sets
    local removals = {}
    local newest_all = not removals_in and oldest ~= nil
        and (latest == nil or oldest > latest or (oldest == latest and write_n >= latest_write))
    if newest_all then
        sets = entity  -- its fields and values, from entity[4] on, as they came
    elseif force then
        sets = {}
        for j = 4, last, 2 do
            if entity[j + 1] == '' then
                removals[#removals + 1] = entity[j]
            else
                sets[#sets + 1] = entity[j]
                sets[#sets + 1] = entity[j + 1]
            end
        end
    else
        sets = {}
        local names = {}
        for j = 4, last, 2 do
            names[#names + 1] = entity[j]
        end
        local current = redis.call('HMGET', key, unpack(names))
        for k = 1, #names do
            local j = 2 * k + 2
            local value = entity[j + 1]
            local stored = current[k]
            local s_event, s_write
            if stored then
                s_event, s_write = string.match(stored, '^(%-?%d+)|(%d+)|')
                s_event, s_write = tonumber(s_event), tonumber(s_write)
            end
            local in_window = s_event and window_start and s_event > window_start and s_event <= window_end
            if value == '' then
                if stored and in_window then
                    removals[#removals + 1] = names[k]
                end
            else
                local event_n = tonumber(string.match(value, '^(%-?%d+)|'))
                if not s_event or in_window or event_n > s_event or (event_n == s_event and write_n >= s_write) then
                    sets[#sets + 1] = names[k]
                    sets[#sets + 1] = value
                end
            end
        end
    end
    if #removals > 0 then
        redis.call('HDEL', key, unpack(removals))
        changed = changed + #removals
    end
    local first = sets == entity and 4 or 1
    local count = #sets - first + 1
    if count > 0 then
        changed = changed + count / 2
        -- Event times stay strings where they are stored: Lua prints big numbers with 14 digits only.
        local summary_event, summary_write = newest_text, write_us
        if latest ~= nil and latest > tonumber(newest_text) then
            summary_event = latest_text
        end
        if latest_write ~= nil and latest_write > write_n then
            summary_write = latest_write_text
        end
        local n = #sets
        sets[n + 1] = '~'
        sets[n + 2] = summary_event .. '|' .. summary_write
        redis.call('HSET', key, unpack(sets, first, n + 2))
        if ttl_ms > 0 then
            redis.call('PEXPIRE', key, ttl_text)
        end
    elseif #removals > 0 and redis.call('HLEN', key) == 1 then
        redis.call('DEL', key)  -- only "~" is left
    end
end
return changed
