-- Apply a batch of events' effects to stream features, each event at most once, atomically.
--
-- KEYS:    the entity hashes (the online store's layout, see stores/online/redis.py) and one dedupe
--          marker per (event, hash tag) touched; on a Redis Cluster one call holds one hash tag's keys.
-- ARGV[1]: write time in microseconds since the epoch (decimal string).
-- ARGV[2]: how long a dedupe marker lives, in milliseconds.
-- ARGV[3]: JSON array of events, in the order they are to be applied (publish order per user):
--          [marker_key_index, event_time_us (string), [op, ...]], each op
--          [key_index, field, kind, argument (string), alpha, ttl_ms, number_format]
--          kind "c": add the argument to the stored number (0 when none);
--          kind "e": alpha * argument + (1 - alpha) * stored (0 when none): an EWMA;
--          kind "s": store the argument (a JSON value) if the event is not older than the stored value.
--
-- A stored field is "event_time_us|write_time_us|value_json" as batch writes leave it, so reads need
-- nothing new; counters and EWMAs keep the latest event time they have seen. The field "~" (latest
-- event and write time in the hash) stays what the batch write's fast path relies on. An event whose
-- marker exists was applied before (a redelivery, or a duplicate publish): nothing changes and the
-- results recorded in its marker are returned again, so the caller can still log them offline.
--
-- Returns one string per event: "1" (applied now) or "0" (applied before), then a JSON array with,
-- per op, the value it stored ("" when a set lost to a newer value).
local write_us = ARGV[1]
local write_n = tonumber(write_us)
local marker_ms = tonumber(ARGV[2])
local events = cjson.decode(ARGV[3])
local out = {}

-- The "~" summary and the expiry of each hash are read and set once per hash and call, not per op.
local summaries, expiring = {}, {}

local function bump_summary(key, event_text)
    local summary = summaries[key]
    if summary == nil then
        summary = redis.call('HGET', key, '~') or false
    end
    local s_event_text, s_write_text = event_text, write_us
    if summary then
        local e_text, w_text = string.match(summary, '^(%-?%d+)|(%d+)$')
        if e_text and tonumber(e_text) > tonumber(event_text) then s_event_text = e_text end
        if w_text and tonumber(w_text) > write_n then s_write_text = w_text end
    end
    summaries[key] = s_event_text .. '|' .. s_write_text
    return summaries[key]
end

for i = 1, #events do
    local event = events[i]
    local marker = KEYS[event[1]]
    local seen = redis.call('GET', marker)
    if seen then
        out[i] = '0' .. seen
    else
        local event_text = event[2]
        local event_n = tonumber(event_text)
        local ops = event[3]
        local results = {}
        for j = 1, #ops do
            local op = ops[j]
            local key, field, kind = KEYS[op[1]], op[2], op[3]
            local stored = redis.call('HGET', key, field)
            local s_event_text, s_value
            if stored then
                s_event_text, s_value = string.match(stored, '^(%-?%d+)|%d+|(.*)$')
            end
            local new_value, new_event_text = nil, event_text
            if kind == 's' then
                if not s_event_text or event_n >= tonumber(s_event_text) then
                    new_value = op[4]
                end
            else
                local previous = tonumber(s_value) or 0
                local x = tonumber(op[4])
                local number
                if kind == 'c' then
                    number = previous + x
                else
                    local alpha = op[5]
                    number = alpha * x + (1 - alpha) * previous
                end
                if op[7] == 'i' then
                    new_value = string.format('%d', number)
                else
                    new_value = string.format('%.17g', number)  -- every bit of the double survives
                end
                if s_event_text and tonumber(s_event_text) > event_n then
                    new_event_text = s_event_text
                end
            end
            if new_value then
                redis.call('HSET', key, field, new_event_text .. '|' .. write_us .. '|' .. new_value,
                    '~', bump_summary(key, new_event_text))
                if op[6] > 0 and not expiring[key] then
                    redis.call('PEXPIRE', key, op[6])
                    expiring[key] = true
                end
                results[j] = new_value
            else
                results[j] = ''
            end
        end
        local encoded = cjson.encode(results)
        if #ops == 0 then encoded = '[]' end  -- cjson encodes an empty table as {}
        redis.call('SET', marker, encoded, 'PX', marker_ms)
        out[i] = '1' .. encoded
    end
end
return out
