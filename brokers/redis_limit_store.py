"""Global rate-limit and concurrency state in Redis, one atomic script per decision.

The store ``RateLimits`` is given (``middleware/limit_store.py`` says what it must do).

Rates use GCRA (a token bucket kept as one "theoretical arrival time" per key).
A job over the rate is not refused: it reserves the next free slot and is told
how long to wait for it, so each deferred job comes back exactly once, when its
slot is due. Concurrency slots are leases in a sorted set scored by expiry:
held while the job runs, renewed by the worker, released when it ends, and
expired when the worker dies.

Dramatiq's own limiters (``dramatiq.rate_limits``) answer only "allowed or
not", not "when", and their concurrent limiter's counter has one TTL for all
holders; neither fits deferral or per-holder expiry, hence these scripts.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from middleware.limit_store import Ask, Decision, Outcome

ACQUIRE = """
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate_key, conc_key = KEYS[1], KEYS[2]
local interval = tonumber(ARGV[1])     -- ms between jobs; 0 = no rate limit
local tau = tonumber(ARGV[2])          -- burst tolerance, ms
local slot = tonumber(ARGV[3])         -- a slot this job reserved earlier; -1 = none
local conc_limit = tonumber(ARGV[4])   -- 0 = no concurrency limit
local lease_id = ARGV[5]
local lease_ms = tonumber(ARGV[6])
local since = tonumber(ARGV[7])        -- first deferral of this job; -1 = never deferred
local max_wait = tonumber(ARGV[8])
local default_avg = tonumber(ARGV[9])
local waiter_id = ARGV[10]             -- the job (message id): one entry while it waits
local waited = 0
if since >= 0 then waited = now - since end

-- Returns {status, wait_ms, slot_ms, now}; status 0 run, 1 wait for rate slot,
-- 2 wait for concurrency, 3 would wait longer than max_wait.
local taken_slot = -1
if interval > 0 then
    if slot >= 0 then
        if slot > now then
            return {1, slot - now, slot, now}
        end
        taken_slot = slot
    else
        local tat = tonumber(redis.call("GET", rate_key) or "0")
        if tat < now then tat = now end
        local allowed_at = tat - tau
        if allowed_at > now and waited + (allowed_at - now) > max_wait then
            return {3, allowed_at - now, -1, now}
        end
        local new_tat = tat + interval
        redis.call("SET", rate_key, new_tat, "PX", math.ceil(new_tat - now + tau) + 1000)
        if allowed_at > now then
            return {1, allowed_at - now, allowed_at, now}
        end
        taken_slot = now
    end
end

if conc_limit > 0 then
    local waiting_key = conc_key .. ":waiting"
    redis.call("ZREMRANGEBYSCORE", conc_key, "-inf", now)
    if redis.call("ZCARD", conc_key) >= conc_limit then
        redis.call("ZREMRANGEBYSCORE", waiting_key, "-inf", now - 60000)
        local waiters = redis.call("ZCARD", waiting_key)
        local avg = tonumber(redis.call("HGET", conc_key .. ":stats", "avg_ms") or default_avg)
        local wait = math.floor(avg * (1 + waiters / conc_limit))
        if wait < 10 then wait = 10 end
        if wait > 10000 then wait = 10000 end
        if waited + wait > max_wait then
            return {3, wait, taken_slot, now}
        end
        redis.call("ZADD", waiting_key, now + wait, waiter_id)
        redis.call("PEXPIRE", waiting_key, 120000)
        return {2, wait, taken_slot, now}
    end
    redis.call("ZADD", conc_key, now + lease_ms, lease_id)
    redis.call("PEXPIRE", conc_key, lease_ms * 2)
    redis.call("ZREM", waiting_key, waiter_id)
end
return {0, 0, taken_slot, now}
"""

RELEASE = """
redis.call("ZREM", KEYS[1], ARGV[1])
local stats = KEYS[1] .. ":stats"
local avg = tonumber(redis.call("HGET", stats, "avg_ms") or ARGV[2])
redis.call("HSET", stats, "avg_ms", math.floor(avg * 0.8 + tonumber(ARGV[2]) * 0.2))
redis.call("PEXPIRE", stats, 86400000)
"""

RENEW = """
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
    redis.call("ZADD", key, "XX", now + lease_ms, ARGV[i + 1])
    redis.call("PEXPIRE", key, lease_ms * 2)
end
"""


class RedisLimitStore:
    """Rate and concurrency state shared by every worker, in one Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._renew = client.register_script(RENEW)

    def acquire(self, ask: Ask) -> Decision:
        outcome, wait_ms, slot_ms, now_ms = self._acquire(
            keys=[ask.rate_key, ask.concurrency_key],
            args=[
                ask.interval_ms,
                ask.interval_ms * (ask.burst - 1),
                ask.slot_ms,
                ask.concurrency,
                ask.lease_id,
                ask.lease_ms,
                ask.since_ms,
                ask.max_wait_ms,
                ask.default_duration_ms,
                ask.waiter_id or ask.lease_id,
            ],
        )
        return Decision(Outcome(int(outcome)), int(wait_ms), int(slot_ms), int(now_ms))

    def release(self, concurrency_key: str, lease_id: str, duration_ms: int) -> None:
        self._release(keys=[concurrency_key], args=[lease_id, max(int(duration_ms), 1)])

    def renew(self, leases: Iterable[tuple[str, str]], lease_ms: int) -> None:
        held = list(leases)
        if held:
            self._renew(keys=[key for key, _ in held], args=[lease_ms, *(lid for _, lid in held)])

    def running(self, concurrency_key: str) -> int:
        """Leases currently held (expired ones included until the next acquire prunes them)."""
        return int(self.client.zcard(concurrency_key))
