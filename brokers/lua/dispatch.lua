-- This file is a part of Dramatiq.
--
-- Copyright (C) 2017,2018,2019,2020 CLEARTYPE SRL <bogdan@cleartype.io>
--
-- Dramatiq is free software; you can redistribute it and/or modify it
-- under the terms of the GNU Lesser General Public License as published by
-- the Free Software Foundation, either version 3 of the License, or (at
-- your option) any later version.
--
-- Dramatiq is distributed in the hope that it will be useful, but WITHOUT
-- ANY WARRANTY; without even the implied warranty of MERCHANTABILITY or
-- FITNESS FOR A PARTICULAR PURPOSE. See the GNU Lesser General Public
-- License for more details.
--
-- You should have received a copy of the GNU Lesser General Public License
-- along with this program.  If not, see <http://www.gnu.org/licenses/>.

-- jobkit: Dramatiq 2.2.1's dispatch.lua with priority levels. Changes:
--   * a canonical queue has one id list per level: $queue (normal),
--     $queue:critical, $queue:high, $queue:low (":" cannot occur in a
--     Dramatiq queue name, so these never collide with a queue);
--   * enqueue takes the level list suffix; fetch takes levels most urgent
--     first (strict) or by weighted random choice (weighted);
--   * requeue takes (id, suffix) pairs and puts ids back at the head of
--     their level list, keeping FIFO order within a level;
--   * fetch returns (id, payload, redeliveries) triples, not payloads alone;
--   * fetch takes a token and records what it took under that token: a fetch
--     retried with the token of one whose reply was lost returns what that one
--     took (a live worker never gets its own unacked set back);
--   * enqueue_batch enqueues many messages of one queue in one call;
--   * ack takes any number of ids;
--   * dead-worker recovery reads each message's level from its JSON;
--   * purge also deletes the level lists.
-- Delay queues ($queue.DQ) keep a single list: a due message is re-enqueued
-- on its canonical queue, where its level applies.

-- luacheck: globals ARGV KEYS redis unpack cjson
-- dispatch(
--   args=[command, timestamp, queue_name, worker_id, heartbeat_timeout, dead_message_ttl, do_maintenance, max_unpack_size, ...],
--   keys=[namespace]
-- )

-- $namespace:__acks__.$worker_id.$queue_name
--   A set of message ids representing fetched-but-not-yet-acked
--   messages belonging to that (worker, queue) pair.
--
-- $namespace:__heartbeats__
--   A sorted set containing unique worker ids sorted by when their
--   last heartbeat was received.
--
-- $namespace:$queue_name
--   A list of message ids (level normal for a canonical queue).
--
-- $namespace:$queue_name:critical|high|low
--   Lists of message ids of the other levels (canonical queues only).
--
-- $namespace:$queue_name.msgs
--   A hash of message ids -> message data.
--
-- $namespace:__fetches__.$worker_id.$queue_name
--   jobkit: a list, the token of that (worker, queue) pair's last fetch that
--   took messages, then the ids it took.
--
-- $namespace:$queue_name.XQ
--   A sorted set containing all the dead-lettered message ids
--   belonging to a queue, sorted by when they were dead lettered.
--
-- $namespace:$queue_name.XQ.msgs
--   A hash of message ids -> message data.

local namespace = KEYS[1]

local command = ARGV[1]
local timestamp = ARGV[2]
local queue_name = ARGV[3]
local worker_id = ARGV[4]
local heartbeat_timeout = ARGV[5]
local dead_message_ttl = ARGV[6]
local do_maintenance = ARGV[7]
local max_unpack_size = ARGV[8]

local acks = namespace .. ":__acks__." .. worker_id
local heartbeats = namespace .. ":__heartbeats__"
redis.call("zadd", heartbeats, timestamp, worker_id)

-- This is used to ensure that we never have a DLQ like default.DQ.XQ
-- since that wouldn't make much sense.
local queue_canonical_name = queue_name
if string.sub(queue_name, -3) == ".DQ" then
    queue_canonical_name = string.sub(queue_name, 1, -4)
end

local queue_acks = acks .. "." .. queue_name
local queue_fetches = namespace .. ":__fetches__." .. worker_id .. "." .. queue_name
local queue_full_name = namespace .. ":" .. queue_name
local queue_messages = queue_full_name .. ".msgs"
-- jobkit: id -> how many times a dead worker's unacked message was given back.
local queue_redeliveries = queue_full_name .. ".redelivered"
local xqueue_full_name = namespace .. ":" .. queue_canonical_name .. ".XQ"
local xqueue_messages = xqueue_full_name .. ".msgs"

-- Level list suffixes, most urgent first; normal is the plain list.
local LEVEL_SUFFIXES = {":critical", ":high", "", ":low"}
local LEVEL_OF = {critical = ":critical", high = ":high", normal = "", low = ":low"}
local is_delay_queue = queue_name ~= queue_canonical_name

-- The list a message id goes back to, read from the message's own JSON.
local function list_for_message(message_data)
    if is_delay_queue or not message_data then
        return queue_full_name
    end
    local ok, message = pcall(cjson.decode, message_data)
    if ok and type(message) == "table" and type(message.options) == "table" then
        local suffix = LEVEL_OF[message.options.priority]
        if suffix then
            return queue_full_name .. suffix
        end
    end
    return queue_full_name
end

-- Command-specific arguments.
local ARGS = {}
for i=9,#ARGV do
    ARGS[i - 8] = ARGV[i]
end

-- Iterates over a table in chunks, yielding a new chunk on each
-- iteration. We use this to do work in batches so we don't overflow
-- lua's stack.
--
-- Example:
--
--   for chunk in iter_chunks(some_table) do
--       do_something(unpack(chunk))
--   end
local function iter_chunks(tbl)
    local len = #tbl
    local i = 1
    return function()
        if i <= len then
            local chunk = {}
            local last_idx = math.min(i + max_unpack_size - 1, len)
            local j
            for j = i, last_idx do
                table.insert(chunk, tbl[j])
            end
            i = last_idx + 1
            return chunk
        end
    end
end


-- Every call to dispatch has some % chance to trigger maintenance on
-- a queue.  Maintenance moves any unacked messages belonging to dead
-- workers back to their queues and deletes any expired messages from
-- DLQs.
if do_maintenance == "1" then
    local dead_workers = redis.call("zrangebyscore", heartbeats, 0, timestamp - heartbeat_timeout)
    for i=1,#dead_workers do
        local dead_worker = dead_workers[i]
        local dead_worker_acks = namespace .. ":__acks__." .. dead_worker
        local dead_worker_queue_acks = dead_worker_acks .. "." .. queue_name
        local message_ids = redis.call("smembers", dead_worker_queue_acks)
        if next(message_ids) then
            for _, message_id in ipairs(message_ids) do
                local message_data = redis.call("hget", queue_messages, message_id)
                if message_data then
                    redis.call("rpush", list_for_message(message_data), message_id)
                    redis.call("hincrby", queue_redeliveries, message_id, 1)
                end
            end
            redis.call("del", dead_worker_queue_acks)
        end
        redis.call("del", namespace .. ":__fetches__." .. dead_worker .. "." .. queue_name)

        -- If there are no more ack groups for this worker, then
        -- remove it from the heartbeats set.
        local ack_queues = redis.call("keys", dead_worker_acks .. "*")
        if not next(ack_queues) then
            redis.call("zrem", heartbeats, dead_worker)
        end
    end

    local dead_message_ids = redis.call("zrangebyscore", xqueue_full_name, 0, timestamp - dead_message_ttl)
    if next(dead_message_ids) then
        for dead_message_ids_batch in iter_chunks(dead_message_ids) do
            redis.call("zrem", xqueue_full_name, unpack(dead_message_ids_batch))
            redis.call("hdel", xqueue_messages, unpack(dead_message_ids_batch))
        end
    end
end


-- Enqueues a new message on $queue_full_name.
if command == "enqueue" then
    local message_id = ARGS[1]
    local message_data = ARGS[2]
    local suffix = ARGS[3] or ""
    if is_delay_queue then
        suffix = ""
    end

    redis.call("hset", queue_messages, message_id, message_data)
    redis.call("rpush", queue_full_name .. suffix, message_id)


-- Enqueues many messages on $queue_full_name in one call (jobkit's bulk send):
-- ARGS are (message_id, message_data, level suffix) triples.
elseif command == "enqueue_batch" then
    for i = 1, #ARGS, 3 do
        local suffix = ARGS[i + 2] or ""
        if is_delay_queue then
            suffix = ""
        end
        redis.call("hset", queue_messages, ARGS[i], ARGS[i + 1])
        redis.call("rpush", queue_full_name .. suffix, ARGS[i])
    end


-- Returns up to $prefetch number of messages from $queue_full_name.
elseif command == "fetch" then
    -- Ensure prefetch isn't so large that we get errors fetching
    local prefetch = math.min(ARGS[1], max_unpack_size)
    -- jobkit: the caller's token for this fetch (the same again when it retries one).
    local token = ARGS[2]
    -- "strict" or "weighted"; weighted takes a seed and 4 weights (most urgent first).
    local mode = ARGS[3] or "strict"

    local lists = {queue_full_name}
    if not is_delay_queue then
        lists = {}
        for i, suffix in ipairs(LEVEL_SUFFIXES) do
            lists[i] = queue_full_name .. suffix
        end
    end

    local message_ids = {}
    local function take(list, count)
        if count <= 0 then
            return
        end
        local popped = redis.call("lpop", list, count)
        if popped then
            for _, message_id in ipairs(popped) do
                message_ids[#message_ids + 1] = message_id
                redis.call("sadd", queue_acks, message_id)
            end
        end
    end

    if redis.call("lindex", queue_fetches, 0) == token then
        -- A retry of a fetch whose reply was lost: the ids it took that are still unacked.
        for _, message_id in ipairs(redis.call("lrange", queue_fetches, 1, -1)) do
            if redis.call("sismember", queue_acks, message_id) == 1 then
                message_ids[#message_ids + 1] = message_id
            end
        end
    elseif mode == "weighted" and #lists > 1 then
        -- Park-Miller generator: products stay below 2^53, exact in Lua numbers.
        local seed = tonumber(ARGS[4]) % 2147483646 + 1
        local weights = {}
        local lengths = {}
        for i = 1, #lists do
            weights[i] = tonumber(ARGS[4 + i])
            lengths[i] = redis.call("llen", lists[i])
        end
        for _ = 1, prefetch do
            local total = 0
            for i = 1, #lists do
                if lengths[i] > 0 then
                    total = total + weights[i]
                end
            end
            if total == 0 then
                break
            end
            seed = (seed * 16807) % 2147483647
            local pick = (seed / 2147483647) * total
            local chosen = nil
            for i = 1, #lists do
                if lengths[i] > 0 then
                    chosen = i
                    pick = pick - weights[i]
                    if pick < 0 then
                        break
                    end
                end
            end
            take(lists[chosen], 1)
            lengths[chosen] = lengths[chosen] - 1
        end
    else
        for _, list in ipairs(lists) do
            take(list, prefetch - #message_ids)
        end
    end

    -- Triples of (id, payload, redeliveries): a consumer can ack or dead-letter
    -- an id whose payload is missing or not a message (payload false -> nil),
    -- and knows which messages a dead worker held (redeliveries false -> nil).
    local triples = {}
    if next(message_ids) ~= nil and redis.call("lindex", queue_fetches, 0) ~= token then
        redis.call("del", queue_fetches)
        redis.call("rpush", queue_fetches, token, unpack(message_ids))
    end
    if next(message_ids) ~= nil then
        local payloads = redis.call("hmget", queue_messages, unpack(message_ids))
        local redeliveries = redis.call("hmget", queue_redeliveries, unpack(message_ids))
        for i, message_id in ipairs(message_ids) do
            triples[3 * i - 2] = message_id
            triples[3 * i - 1] = payloads[i]
            triples[3 * i] = redeliveries[i]
        end
    end
    return triples


-- Moves fetched-but-not-processed messages back to their queues on
-- worker shutdown.
elseif command == "requeue" then
    -- ARGS: message_id, level suffix, message_id, level suffix, ... in
    -- fetch order; pushed back to the head of their lists in reverse, so
    -- they run next and in the order they were fetched.
    for i = #ARGS - 1, 1, -2 do
        local message_id = ARGS[i]
        local suffix = ARGS[i + 1] or ""
        if is_delay_queue then
            suffix = ""
        end

        if redis.call("srem", queue_acks, message_id) > 0 then
            if redis.call("hexists", queue_messages, message_id) > 0 then
                redis.call("lpush", queue_full_name .. suffix, message_id)
            end
        end
    end


-- Acknowledges that a message has been processed.
-- jobkit: any number of ids (brokers/acks.py sends a batch per call).
elseif command == "ack" then
    for _, message_id in ipairs(ARGS) do
        if redis.call("srem", queue_acks, message_id) > 0 then
            redis.call("hdel", queue_messages, message_id)
            redis.call("hdel", queue_redeliveries, message_id)
        end
    end


-- Moves a message from a queue to a dead-letter queue.
elseif command == "nack" then
    local message_id = ARGS[1]

    -- unack the message
    if redis.call("srem", queue_acks, message_id) > 0 then
        -- then pop it off the messages hash and move it onto the DLQ
        local message = redis.call("hget", queue_messages, message_id)
        if message then
            redis.call("zadd", xqueue_full_name, timestamp, message_id)
            redis.call("hset", xqueue_messages, message_id, message)
            redis.call("hdel", queue_messages, message_id)
        end
        redis.call("hdel", queue_redeliveries, message_id)
    end


-- Removes all messages from a queue.
elseif command == "purge" then
    redis.call("del", queue_full_name, queue_acks, queue_messages, xqueue_full_name, xqueue_messages, queue_redeliveries, queue_fetches)
    for _, suffix in ipairs(LEVEL_SUFFIXES) do
        if suffix ~= "" then
            redis.call("del", queue_full_name .. suffix)
        end
    end


-- Used in tests to determine the size of the queue and its connected delay queue.
-- Runs nothing but the maintenance above (jobkit's periodic dead-worker sweep).
elseif command == "sweep" then
    return nil

elseif command == "qsize" then
    local q_aks = acks .. "." .. queue_canonical_name
    local q_fn = namespace .. ":" .. queue_canonical_name
    local q_msgs = q_fn .. ".msgs"
    local dq_q_aks = q_aks .. ".DQ"
    local dq_q_msgs = q_fn .. ".DQ" .. ".msgs"

    return redis.call("hlen", dq_q_msgs) +
           redis.call("scard", dq_q_aks) +
           redis.call("hlen", q_msgs) +
           redis.call("scard", q_aks)

end
