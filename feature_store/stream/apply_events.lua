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

-- Consecutive ops on one hash (a group's features of one entity) are read with one HMGET and written
-- with one HSET; each hash's expiry is set once per call.
local expiring = {}

local function later(a_text, b_text)
    if a_text and tonumber(a_text) > tonumber(b_text) then return a_text end
    return b_text
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
        local j = 1
        while j <= #ops do
            local key_index = ops[j][1]
            local last = j
            while last < #ops and ops[last + 1][1] == key_index do last = last + 1 end
            local key = KEYS[key_index]
            local fields = {'~'}
            for k = j, last do fields[#fields + 1] = ops[k][2] end
            local current = redis.call('HMGET', key, unpack(fields))
            local summary_event, summary_write = event_text, write_us
            if current[1] then
                local e_text, w_text = string.match(current[1], '^(%-?%d+)|(%d+)$')
                summary_event = later(e_text, event_text)
                summary_write = later(w_text, write_us)
            end
            local sets = {}
            for k = j, last do
                local op = ops[k]
                local field, kind = op[2], op[3]
                local stored = current[k - j + 2]
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
                    new_event_text = later(s_event_text, event_text)
                end
                if new_value then
                    sets[#sets + 1] = field
                    sets[#sets + 1] = new_event_text .. '|' .. write_us .. '|' .. new_value
                    summary_event = later(summary_event, new_event_text)
                    results[k] = new_value
                else
                    results[k] = ''
                end
            end
            if #sets > 0 then
                sets[#sets + 1] = '~'
                sets[#sets + 1] = summary_event .. '|' .. summary_write
                redis.call('HSET', key, unpack(sets))
                local ttl = ops[j][6]
                if ttl > 0 and not expiring[key] then
                    redis.call('PEXPIRE', key, ttl)
                    expiring[key] = true
                end
            end
            j = last + 1
        end
        local encoded = cjson.encode(results)
        if #ops == 0 then encoded = '[]' end  -- cjson encodes an empty table as {}
        redis.call('SET', marker, encoded, 'PX', marker_ms)
        out[i] = '1' .. encoded
    end
end
return out
