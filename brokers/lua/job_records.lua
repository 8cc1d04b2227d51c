-- Job records (brokers/job_record_store.py): apply a batch of events, or cancel a job.
--
-- Keys (prefix jobkit:job): a hash per job, "jobkit:job:<id>", with fields
--   state, seq (ordinal of the event that set it), state_at (ms), history
--   ("ordinal|state|ms|note" entries joined by ";"), runs (claims so far),
--   a<k> (attempt k as JSON), cancel (ms a cancel was asked), actor, queue,
--   priority, args, enqueued_at, group, result, result_error, progress, ...
-- and sorted sets, member = job id, score = ms the job entered its state:
--   jobkit:jobs:s:<state>, jobkit:jobs:a:<actor>:<state>, jobkit:jobs:q:<queue>:<state>
--   jobkit:jobs:g:<group> (score = enqueued ms): a group's or pipeline's jobs.
-- A finished job's hash expires after the TTL; its index entries are trimmed by
-- score as later jobs finish. Unfinished jobs' hashes never expire.
--
-- ARGV[1] = "apply": ARGV[2] = TTL ms, then events of 9 + 2n items each:
--   kind ("e" event, "c" claim, "p" patch of an existing record), id, actor, queue,
--   ordinal, state ("" = none), ms, note, n, then n field/value pairs. A field
--   named "?x" is set only if absent; "a#" names a new attempt's field (numbered by
--   the claim, else counted here) and "a$" the latest attempt's.
--   Returns one reply per claim: the attempt number, or "done:<state>" (a finished
--   job: do not run it again), or "cancelled" (a cancel came first: do not run it;
--   no attempt is added). A finished job's record takes no event from after its end
--   and none it already has (a redelivery); a late one from before its end, yes.
-- ARGV[1] = "cancel": ARGV[2] = id, ARGV[3] = ms, ARGV[4] = channel. Returns
--   {"not_found"}, {"finished", state}, {"cancelling"} (running: the worker is told
--   on the channel) or {"cancelled", state} (it will never run).

local P, I = "jobkit:job:", "jobkit:jobs:"
local TERMINAL = {succeeded = true, failed = true, cancelled = true, skipped = true}
local WAITING = {queued = true, delayed = true, deferred = true, retrying = true}
local ttl = 0
local trim = {}

local function indexes(actor, queue, state)
    return {I .. "s:" .. state, I .. "a:" .. actor .. ":" .. state, I .. "q:" .. queue .. ":" .. state}
end

-- Moves the job between state indexes, sets its state; a finished one starts to expire.
local function enter(key, id, actor, queue, old, state, ordinal, ms)
    if old then
        for _, index in ipairs(indexes(actor, queue, old)) do
            redis.call("zrem", index, id)
        end
    end
    for _, index in ipairs(indexes(actor, queue, state)) do
        redis.call("zadd", index, ms, id)
        if TERMINAL[state] then
            trim[index] = true
        end
    end
    redis.call("hset", key, "state", state, "seq", ordinal, "state_at", ms)
    if TERMINAL[state] and ttl > 0 then
        redis.call("pexpire", key, ttl)
    end
end

local function remember(key, ordinal, state, ms, note)
    local entry = ordinal .. "|" .. state .. "|" .. ms .. "|" .. note
    local history = redis.call("hget", key, "history")
    redis.call("hset", key, "history", history and (history .. ";" .. entry) or entry)
end

-- Whether a finished job's record ignores an event: one from after its end (a delayed
-- message coming due after a cancel) or one it already has (a message delivered or sent
-- again). A late event from before its end (another process's batch) still counts.
local function ignored(key, current, seq, ordinal, state)
    if not (current and TERMINAL[current]) then
        return false
    end
    if seq and ordinal >= seq then
        return true
    end
    local history = redis.call("hget", key, "history") or ""
    return string.find(";" .. history, ";" .. ordinal .. "|" .. state .. "|", 1, true) ~= nil
end

-- An event's state applies unless the job already finished or saw a later event;
-- true when it did.
local function apply_state(key, id, actor, queue, ordinal, state, ms, note, current, seq)
    remember(key, ordinal, state, ms, note)
    if current and TERMINAL[current] then
        return false
    end
    if seq and ordinal < seq then
        return false
    end
    enter(key, id, actor, queue, current, state, ordinal, ms)
    return true
end

-- attempt: the number a claim gave, 0 (count one here) or nil (a refused claim: none).
local function set_fields(key, id, ms, first, count, attempt)
    for j = first, first + 2 * count - 1, 2 do
        local field, value = ARGV[j], ARGV[j + 1]
        if field == "a#" then
            if attempt == 0 then  -- a start recorded after an outage, unclaimed
                attempt = redis.call("hincrby", key, "runs", 1)
            end
            field = attempt and ("a" .. attempt)
        elseif field == "a$" then  -- the end of the attempt whose number the worker missed
            field = "a" .. (redis.call("hget", key, "runs") or "1")
        end
        if field and string.sub(field, 1, 1) == "?" then
            redis.call("hsetnx", key, string.sub(field, 2), value)
        elseif field then
            redis.call("hset", key, field, value)
        end
        if field == "group" or field == "?group" then
            local group = I .. "g:" .. value
            redis.call("zadd", group, ms, id)
            if ttl > 0 then
                redis.call("pexpire", group, 2 * ttl)
            end
        end
    end
end

if ARGV[1] == "cancel" then
    local id, ms, channel = ARGV[2], tonumber(ARGV[3]), ARGV[4]
    local key = P .. id
    local now = redis.call("hmget", key, "state", "seq", "actor", "queue")
    if not now[1] then
        return {"not_found"}
    end
    local state = now[1]
    if TERMINAL[state] then
        return {"finished", state}
    end
    ttl = tonumber(ARGV[5])
    redis.call("hset", key, "cancel", ms)
    if state == "running" then
        redis.call("publish", channel, id)
        return {"cancelling"}
    end
    remember(key, tonumber(now[2]) or 0, "cancelled", ms, "before it ran")
    enter(key, id, now[3], now[4], state, "cancelled", tonumber(now[2]) or 0, ms)
    if ttl > 0 then
        for index in pairs(trim) do
            redis.call("zremrangebyscore", index, "-inf", "(" .. (ms - ttl))
        end
    end
    return {"cancelled", state}
end

ttl = tonumber(ARGV[2])
local replies = {}
local i = 3
while i <= #ARGV do
    local kind, id, actor, queue = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local ordinal, state, ms, note = tonumber(ARGV[i + 4]), ARGV[i + 5], tonumber(ARGV[i + 6]), ARGV[i + 7]
    local count = tonumber(ARGV[i + 8])
    local first = i + 9
    i = first + 2 * count
    local key = P .. id
    local now = redis.call("hmget", key, "state", "seq", "cancel")
    local current, seq, cancel = now[1], tonumber(now[2]), now[3]
    if kind == "c" then
        if current and TERMINAL[current] then
            table.insert(replies, "done:" .. current)
        elseif cancel then
            set_fields(key, id, ms, first, count, nil)
            apply_state(key, id, actor, queue, ordinal + 1, "cancelled", ms, "before it ran", current, seq)
            table.insert(replies, "cancelled")
        else
            local attempt = redis.call("hincrby", key, "runs", 1)
            set_fields(key, id, ms, first, count, attempt)
            apply_state(key, id, actor, queue, ordinal, state, ms, note, current, seq)
            table.insert(replies, attempt)
        end
    elseif kind == "p" then
        if current then
            set_fields(key, id, ms, first, count, 0)
        end
    elseif state == "" then
        set_fields(key, id, ms, first, count, 0)
    elseif not ignored(key, current, seq, ordinal, state) then
        set_fields(key, id, ms, first, count, 0)
        local entered = apply_state(key, id, actor, queue, ordinal, state, ms, note, current, seq)
        if entered and cancel and WAITING[state] then
            -- Cancelled as its attempt ended, and it was to run again: it never will.
            remember(key, ordinal, "cancelled", ms, "before it ran")
            enter(key, id, actor, queue, state, "cancelled", ordinal, ms)
        end
    end
end
if next(trim) and ttl > 0 then
    local clock = redis.call("time")
    local cutoff = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) - ttl
    for index in pairs(trim) do
        redis.call("zremrangebyscore", index, "-inf", "(" .. cutoff)
    end
end
return replies
