-- Job records (brokers/job_record_store.py): apply a batch of events, or cancel a job.
--
-- Keys: one string per job, "jobkit:job:<id>", holding a JSON object with short keys
-- (a small string costs far less memory than a hash whose values pass 64 bytes):
--   st state, sq ordinal of the event that set it, sa ms it was entered, h history
--   ([ordinal, state, ms, note] entries, no note when empty), ru attempts so far, at attempts by number
--   ({s start, e end, d duration ms, w "host:pid", o outcome, et/em/tb error}),
--   cx ms a cancel was asked, cl the ordinal of the claim of a worker that holds the
--   job (received, not yet started), and the fields events set (middleware/record_sink.py).
-- Sorted sets, member = job id, score = ms the job entered its state:
--   jobkit:jobs:s:<state>, jobkit:jobs:a:<actor>:<state>;
--   jobkit:jobs:g:<group> (score = ms sent): a group's or pipeline's jobs.
-- jobkit:jobs:actors (hash actor -> queue): an actor's jobs all go to its queue, so a
-- queue's jobs are its actors' (one index entry less per job: a third of its memory).
-- jobkit:jobs:p:<first 4 characters of the id> (hash: the rest of the id -> ""): the
-- ids by prefix, so that a prefix is one small read (a few dozen fields a bucket at a
-- million jobs, each about 40 bytes); a field goes when its job's finished index entry
-- is trimmed.
-- A finished job's string expires after the TTL (0: never); its index entries are
-- trimmed by score as later jobs finish, and every actor's once a minute
-- (jobkit:jobs:swept). Unfinished jobs' strings never expire.
--
-- ARGV[1] = "apply": ARGV[2] = TTL ms, then one JSON array an event: kind ("e" event,
--   "c" claim, "p" patch of an existing record), id, actor, queue, ordinal, state
--   ("" = none), ms, note, {field: value} (string values). A field named
--   "?x" is set only if absent; "at#" names a new attempt (counted here), "at:<n>"
--   attempt n, "at$" the latest; attempts' values are JSON.
--   A claim (a worker received the job) changes no state; it returns 1 (run it; the
--   record knows the job) or 0 (run it; the job's start is to say what it is), or
--   "done:<state>" (a finished job: do not run it again), or "cancelled" (a cancel came
--   first: do not run it). A finished job's record takes no event from after its end
--   and none it already has (a redelivery); a late one from before its end, yes.
--   Each record is read once and written once per batch, whatever its events.
-- ARGV[1] = "cancel": ARGV[2] = id, ARGV[3] = ms, ARGV[4] = channel, ARGV[5] = TTL ms.
--   Returns {"not_found"}, {"finished", state}, {"cancelling"} (running, or held by a
--   worker that claimed it: the worker is told on the channel) or {"cancelled", state}
--   (it will never run; a unique job's
--   key, "jobkit:unique:<actor>:<uk>" (middleware/unique_jobs.py), is freed if it
--   still holds the job's id).

local P, I = "jobkit:job:", "jobkit:jobs:"
local TERMINAL = {succeeded = true, failed = true, cancelled = true, skipped = true}
local WAITING = {queued = true, delayed = true, deferred = true, retrying = true}
local ttl = 0
local trim = {}

-- Index names by actor and state, built once a call (most batches are one actor's jobs).
local names = {}
local function indexes(doc, state)
    local actor = doc.ac or ""
    local by_actor = names[actor]
    if by_actor == nil then
        by_actor = {}
        names[actor] = by_actor
    end
    local pair = by_actor[state]
    if pair == nil then
        pair = {I .. "s:" .. state, I .. "a:" .. actor .. ":" .. state}
        by_actor[state] = pair
    end
    return pair
end

local function load(key)
    local raw = redis.call("get", key)
    if raw then
        return cjson.decode(raw)
    end
    return nil
end

local function save(key, doc)
    if TERMINAL[doc.st] and ttl > 0 and not doc.ex then
        doc.ex = 1  -- its expiry is set: later patches keep it (KEEPTTL)
        redis.call("set", key, cjson.encode(doc), "PX", ttl)
    else
        redis.call("set", key, cjson.encode(doc), "KEEPTTL")
    end
end

-- Moves the job between state indexes and sets its state.
local function enter(doc, id, state, ordinal, ms)
    if doc.st then
        for _, index in ipairs(indexes(doc, doc.st)) do
            redis.call("zrem", index, id)
        end
    end
    for _, index in ipairs(indexes(doc, state)) do
        redis.call("zadd", index, ms, id)
        if TERMINAL[state] then
            trim[index] = true
        end
    end
    if doc.cl and ordinal > doc.cl then
        doc.cl = nil  -- the claimed delivery ran (or is to run again): no worker holds it
    end
    doc.st, doc.sq, doc.sa = state, ordinal, ms
end

-- Whether a finished job's record ignores an event: one from after its end (a delayed
-- message coming due after a cancel) or one it already has (a message delivered or sent
-- again). A late event from before its end (another process's batch) still counts.
local function ignored(doc, ordinal, state)
    if not (doc.st and TERMINAL[doc.st]) then
        return false
    end
    if doc.sq and ordinal >= doc.sq then
        return true
    end
    for _, entry in ipairs(doc.h or {}) do
        if entry[1] == ordinal and entry[2] == state then
            return true
        end
    end
    return false
end

-- An event's state applies unless the job already finished or saw a later event;
-- true when it did.
local function apply_state(doc, id, ordinal, state, ms, note)
    doc.h = doc.h or {}
    -- [ordinal, state, ms, note], the note left out when empty (most are; memory)
    table.insert(doc.h, note ~= "" and {ordinal, state, ms, note} or {ordinal, state, ms})
    if doc.st and TERMINAL[doc.st] then
        return false
    end
    if doc.sq and ordinal < doc.sq then
        return false
    end
    enter(doc, id, state, ordinal, ms)
    return true
end

local function set_fields(doc, id, ms, fields)
    for field, value in pairs(fields) do
        if string.sub(field, 1, 2) == "at" then
            local number
            if field == "at$" then
                number = doc.ru or 1
            elseif field == "at#" then
                doc.ru = (doc.ru or 0) + 1
                number = doc.ru
            else
                number = tonumber(string.sub(field, 4))
            end
            doc.at = doc.at or {}
            doc.at[tostring(number)] = cjson.decode(value)
        elseif string.sub(field, 1, 1) == "?" then
            field = string.sub(field, 2)
            if doc[field] == nil then
                doc[field] = value
                if field == "gr" then
                    local group = I .. "g:" .. value
                    redis.call("zadd", group, ms, id)
                    if ttl > 0 then
                        redis.call("pexpire", group, 2 * ttl)
                    end
                end
            end
        else
            doc[field] = value
        end
    end
end

-- The id-prefix bucket of a job (see above): the first 4 characters, and the rest.
local function prefix_entry(id)
    return I .. "p:" .. string.sub(id, 1, 4), string.sub(id, 5)
end

-- Index entries of expired records go; with those of a state index (each job has one),
-- their ids' prefix entries, at most TRIM_CHUNK a call and index (the rest next time).
local TRIM_CHUNK = 1000
local function trim_indexes(now)
    if ttl <= 0 then
        return
    end
    local cutoff = "(" .. (now - ttl)
    for index in pairs(trim) do
        if string.sub(index, #I + 1, #I + 2) == "s:" then
            local gone = redis.call("zrangebyscore", index, "-inf", cutoff, "limit", 0, TRIM_CHUNK)
            if #gone > 0 then
                redis.call("zrem", index, unpack(gone))
                for _, id in ipairs(gone) do
                    local bucket, rest = prefix_entry(id)
                    redis.call("hdel", bucket, rest)
                end
            end
        else
            redis.call("zremrangebyscore", index, "-inf", cutoff)
        end
    end
end

if ARGV[1] == "cancel" then
    local id, ms, channel = ARGV[2], tonumber(ARGV[3]), ARGV[4]
    ttl = tonumber(ARGV[5])
    local key = P .. id
    local doc = load(key)
    if not doc or not (doc.st or doc.cl) then
        return {"not_found"}
    end
    if TERMINAL[doc.st] then
        return {"finished", doc.st}
    end
    doc.cx = ms
    local was = doc.st
    if was == "running" or doc.cl then
        save(key, doc)
        redis.call("publish", channel, id)
        return {"cancelling"}
    end
    apply_state(doc, id, doc.sq or 0, "cancelled", ms, "before it ran")
    save(key, doc)
    trim_indexes(ms)
    if doc.uk and doc.ac then  -- a unique job's key is free again (middleware/unique_jobs.py)
        local lock = "jobkit:unique:" .. doc.ac .. ":" .. doc.uk
        if redis.call("get", lock) == id then
            redis.call("del", lock)
        end
    end
    return {"cancelled", was}
end

ttl = tonumber(ARGV[2])
local replies = {}
-- Records read in this batch (false: none), and those changed, in the order changed.
local docs, changed, order = {}, {}, {}
local function fetch(id)
    local doc = docs[id]
    if doc == nil then
        doc = load(P .. id) or false
        docs[id] = doc
    end
    return doc or nil
end
local function keep(id, doc)
    docs[id] = doc
    if not changed[id] then
        changed[id] = true
        table.insert(order, id)
    end
end
-- The queue of each actor seen (jobkit:jobs:actors), written once a call.
local actors = {}
local function note_actor(actor, queue)
    if actors[actor] ~= queue then
        actors[actor] = queue
        redis.call("hset", I .. "actors", actor, queue)
    end
end
-- A record's first event: what its index keys need, and its id's prefix entry.
local function start_record(doc, id, actor, queue)
    doc.ac, doc.qu = actor, queue
    note_actor(actor, queue)
    local bucket, rest = prefix_entry(id)
    redis.call("hset", bucket, rest, "")
end
for i = 3, #ARGV do
    local event = cjson.decode(ARGV[i])
    local kind, id, actor, queue = event[1], event[2], event[3], event[4]
    local ordinal, state, ms, note, fields = event[5], event[6], event[7], event[8], event[9]
    local doc = fetch(id)
    if kind == "p" then
        if doc then
            set_fields(doc, id, ms, fields)
            keep(id, doc)
        end
    elseif kind == "c" then
        -- Refused as done if it was cancelled, or finished at or after this delivery's
        -- point (the same message given back); a later delivery runs, never dropped.
        if doc and doc.st and TERMINAL[doc.st] and ((doc.sq or 0) >= ordinal or doc.cx) then
            table.insert(replies, "done:" .. doc.st)
        elseif doc and doc.cx then
            apply_state(doc, id, ordinal + 1, "cancelled", ms, "before it ran")
            keep(id, doc)
            table.insert(replies, "cancelled")
        else
            -- No record yet: sent unrecorded, or its send's batch comes after this claim;
            -- the claim starts one, so that a cancel from now on reaches the worker.
            table.insert(replies, doc and doc.eq and 1 or 0)
            doc = doc or {}
            if doc.ac == nil then
                start_record(doc, id, actor, queue)
            end
            doc.cl = ordinal
            keep(id, doc)
        end
    else
        doc = doc or {}
        -- Index keys need the actor and queue, whichever event comes first.
        if doc.ac == nil then
            start_record(doc, id, actor, queue)
        end
        if state == "" then
            set_fields(doc, id, ms, fields)
        elseif not ignored(doc, ordinal, state) then
            set_fields(doc, id, ms, fields)
            if apply_state(doc, id, ordinal, state, ms, note) and doc.cx and WAITING[state] then
                -- Cancelled as its attempt ended, and it was to run again: it never will.
                apply_state(doc, id, ordinal, "cancelled", ms, "before it ran")
            end
        end
        keep(id, doc)
    end
end
for _, id in ipairs(order) do
    save(P .. id, docs[id])
end
if next(trim) and ttl > 0 then
    local clock = redis.call("time")
    local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    -- Once a minute, every actor's finished indexes too: an actor that no longer runs
    -- has no later job to trim its entries.
    if redis.call("set", I .. "swept", 1, "NX", "PX", 60000) then
        for _, actor in ipairs(redis.call("hkeys", I .. "actors")) do
            for state in pairs(TERMINAL) do
                trim[I .. "a:" .. actor .. ":" .. state] = true
            end
        end
        for state in pairs(TERMINAL) do  -- and each state's, whose prefix entries go too
            trim[I .. "s:" .. state] = true
        end
    end
    trim_indexes(now)
end
return replies
