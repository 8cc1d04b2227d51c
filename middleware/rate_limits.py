"""Global rate and concurrency limits declared on actors, enforced before a job runs.

Actor options::

    @dramatiq.actor(rate_limit="20/s", concurrency_limit=2, rate_limit_key="host")
    def fetch(host: str, path: str) -> None: ...

- ``rate_limit``: ``"N/s"``, ``"N/m"`` or ``"N/h"``; a token bucket (GCRA) of size
  ``rate_limit_burst`` (default 1: jobs are spaced evenly, no bursts).
- ``concurrency_limit``: at most N jobs running at once, across every worker.
- ``rate_limit_key``: an argument name, or a callable ``(args, kwargs) -> str``;
  each key value gets limits of its own (per host, per customer).
- ``rate_limit_max_wait``: ms a job may be deferred in all before it is
  dead-lettered instead (default 1 hour); also a per-message option.

Limit state lives in Redis (``brokers.state``). Where there is none (RabbitMQ
without ``JOBKIT_STATE_URL``), a limited actor still declares, but sending it
raises ``RateLimitConfigError``, a worker logs an ERROR at boot, and a job of it
that arrives anyway is dead-lettered (``limits_unavailable``), never run unlimited.

A job over its limit is not run and counts neither as a failure nor as a
retry: it is re-enqueued with a delay (a rate-limited job reserves its slot
and comes back when the slot is due; a concurrency-limited one waits about a
job's duration per job waiting ahead of it), with jitter, and counted in
``message.options["rate_limit_deferrals"]``. Deferrals are logged at INFO.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from dramatiq import Broker, Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.middleware import MiddlewareError, SkipMessage

from jobkit.errors import JobkitError

from . import outcomes
from .deliveries import CurrentDelivery
from .dramatiq_seam import SKIPPED_MESSAGE_LOG, WORKER_THREAD_LOGGER
from .hooks import JobkitMiddleware
from .limit_store import Ask, LimitStore, LimitStoreFactory, Outcome

logger = structlog.get_logger("jobkit.rate_limits")

LEASE_ENV = "JOBKIT_CONCURRENCY_LEASE_MS"
DEFAULT_LEASE_MS = 30_000
DEFAULT_MAX_WAIT_MS = 3_600_000
KEY_PREFIX = "jobkit:limits"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.I)
_PERIOD_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}

#: What a deferred job carries in its message options.
DEFERRALS = "rate_limit_deferrals"
SINCE = "rate_limited_since"
SLOT = "rate_limit_slot"
#: Dead-letter reason of a limited job run where no limit store is configured.
LIMITS_UNAVAILABLE = "limits_unavailable"


class RateLimitConfigError(JobkitError, MiddlewareError, ValueError):
    """An actor's limit options are invalid, or nothing can store limit state."""


class RateLimitWaitExceeded(JobkitError, SkipMessage):
    """A job stayed over its limit longer than ``rate_limit_max_wait``; it is dead-lettered.

    A ``SkipMessage``: raised before the job runs, and kept as the message's exception.
    """

    reason = "rate_limited"


class RateLimitsUnavailable(JobkitError, SkipMessage):
    """A limited actor's job reached a worker that has no store for limit state."""

    reason = LIMITS_UNAVAILABLE


def parse_rate(text: Any) -> float:
    """``"20/s"`` -> 50.0, the interval between jobs in ms."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if not match or float(match.group(1)) <= 0:
        raise RateLimitConfigError(
            f"invalid rate_limit {text!r}: write N/s, N/m or N/h with N > 0, e.g. '20/s'"
        )
    return _PERIOD_MS[match.group(2)[0].lower()] / float(match.group(1))


@dataclass(frozen=True)
class ActorLimits:
    """An actor's limits, checked once at declaration."""

    actor_name: str
    interval_ms: float
    burst: int
    concurrency: int
    key_of: Callable[[tuple, dict], str] | None
    max_wait_ms: int

    def key(self, message: Message | MessageProxy) -> str:
        base = f"{KEY_PREFIX}:{self.actor_name}"
        if self.key_of is None:
            return base
        value = str(self.key_of(tuple(message.args), dict(message.kwargs)))
        return f"{base}:{value[:200]}"


def _key_function(actor: Any, key: Any) -> Callable[[tuple, dict], str] | None:
    if key is None:
        return None
    if callable(key):
        return key
    if not isinstance(key, str):
        raise RateLimitConfigError(
            f"actor {actor.actor_name!r}: rate_limit_key must be an argument name or a callable"
        )
    signature = inspect.signature(actor.fn)
    if key not in signature.parameters:
        raise RateLimitConfigError(
            f"actor {actor.actor_name!r}: rate_limit_key={key!r} is not one of its arguments "
            f"({', '.join(signature.parameters) or 'none'})"
        )

    def argument(args: tuple, kwargs: dict) -> str:
        return str(signature.bind_partial(*args, **kwargs).arguments.get(key))

    return argument


def limits_of(actor: Any) -> ActorLimits | None:
    """An actor's validated limits, or ``None`` if it declares none."""
    options = actor.options
    rate, concurrency = options.get("rate_limit"), options.get("concurrency_limit")
    if rate is None and concurrency is None:
        for name in ("rate_limit_key", "rate_limit_burst"):
            if options.get(name) is not None:
                raise RateLimitConfigError(
                    f"actor {actor.actor_name!r}: {name} needs rate_limit or concurrency_limit"
                )
        return None
    burst = options.get("rate_limit_burst", 1)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        raise RateLimitConfigError(
            f"actor {actor.actor_name!r}: rate_limit_burst must be an int >= 1"
        )
    if concurrency is not None and (
        not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
    ):
        raise RateLimitConfigError(
            f"actor {actor.actor_name!r}: concurrency_limit must be an int >= 1, "
            f"got {concurrency!r}"
        )
    max_wait = options.get("rate_limit_max_wait", DEFAULT_MAX_WAIT_MS)
    if not isinstance(max_wait, int) or max_wait < 0:
        raise RateLimitConfigError(
            f"actor {actor.actor_name!r}: rate_limit_max_wait must be an int of ms >= 0"
        )
    return ActorLimits(
        actor_name=actor.actor_name,
        interval_ms=parse_rate(rate) if rate is not None else 0.0,
        burst=burst,
        concurrency=concurrency or 0,
        key_of=_key_function(actor, options.get("rate_limit_key")),
        max_wait_ms=max_wait,
    )


class _QuietSkips(logging.Filter):
    """Drops Dramatiq's WARNING "Message ... was skipped." for jobs we deferred on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.message_ids: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == SKIPPED_MESSAGE_LOG and isinstance(record.args, tuple) and record.args:
            message_id = getattr(record.args[0], "message_id", None)
            if message_id in self.message_ids:
                self.message_ids.discard(message_id)
                return False
        return True


_QUIET_SKIPS = _QuietSkips()
logging.getLogger(WORKER_THREAD_LOGGER).addFilter(_QUIET_SKIPS)


class RateLimits(JobkitMiddleware):
    """Enforces ``rate_limit`` / ``concurrency_limit`` before each job, without burning retries."""

    def __init__(self, store_factory: LimitStoreFactory, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        #: Makes the shared limit store from the state Redis (``brokers/redis_limit_store.py``).
        self.store_factory = store_factory
        #: How long a concurrency slot is held without renewal (``JOBKIT_CONCURRENCY_LEASE_MS``).
        self.lease_ms = lease_ms
        self.store: LimitStore | None = None
        self.no_store_reason = "no Redis is configured for rate-limit state"
        self._limits: dict[str, ActorLimits | None] = {}
        #: Limited actors declared while no store was configured.
        self._without_store: set[str] = set()
        #: lease id -> (concurrency key, lease id, start): every lease this process holds.
        self._leases: dict[str, tuple[str, str, float]] = {}
        self._delivery = CurrentDelivery()
        self._leases_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._quiet = _QUIET_SKIPS

    @property
    def actor_options(self) -> set[str]:
        return {
            "rate_limit",
            "rate_limit_burst",
            "concurrency_limit",
            "rate_limit_key",
            "rate_limit_max_wait",
        }

    def after_state_store(
        self, broker: Broker, client: redis.Redis | None, no_store_reason: str
    ) -> None:
        """Where limit state lives (``build_broker`` emits this); ``None`` forbids limits."""
        self.store = self.store_factory(client) if client is not None else None
        if self.store is not None:
            self._without_store.clear()
        if no_store_reason:
            self.no_store_reason = no_store_reason

    def before_declare_actor(self, broker: Broker, actor: Any) -> None:
        limits = limits_of(actor)
        self._limits[actor.actor_name] = limits
        # Declaring still works without a store, so one limited actor does not stop a
        # whole package of actors from loading; sending or running it fails instead.
        if limits is not None and self.store is None:
            self._without_store.add(actor.actor_name)

    def before_enqueue(self, broker: Broker, message: Message, delay: int) -> None:
        if message.actor_name in self._without_store:
            raise RateLimitConfigError(self._unavailable(message.actor_name))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        limits = self._limits.get(message.actor_name)
        if limits is None:
            return
        if self.store is None:
            # Sent by a process that had a store: keep the job, as a dead letter to replay.
            outcomes.note(message.message_id, LIMITS_UNAVAILABLE)
            message.fail()
            raise RateLimitsUnavailable(self._unavailable(message.actor_name))
        options = message.options
        key = limits.key(message)
        lease_id = f"{message.message_id}:{uuid.uuid4().hex[:12]}"
        decision = self.store.acquire(
            Ask(
                rate_key=f"{key}:rate",
                concurrency_key=f"{key}:running",
                interval_ms=limits.interval_ms,
                burst=limits.burst,
                concurrency=limits.concurrency,
                lease_id=lease_id,
                waiter_id=message.message_id,
                lease_ms=self.lease_ms,
                slot_ms=int(options.get(SLOT, -1)),
                since_ms=int(options.get(SINCE, -1)),
                max_wait_ms=int(options.get("rate_limit_max_wait", limits.max_wait_ms)),
            )
        )
        # A reserved slot is used up now: a retry of this job must not inherit it.
        options.pop(SLOT, None)
        if decision.outcome is Outcome.RUN:
            if limits.concurrency:
                with self._leases_lock:
                    self._leases[lease_id] = (f"{key}:running", lease_id, time.monotonic())
                self._delivery.start(message, lease_id=lease_id)
            return
        self._quiet.message_ids.add(message.message_id)
        if decision.outcome is Outcome.OVER_MAX_WAIT:
            error = RateLimitWaitExceeded(
                f"job {message.message_id} of {message.actor_name} would wait over its "
                f"rate_limit_max_wait; dead-lettered after {options.get(DEFERRALS, 0)} deferrals"
            )
            outcomes.note(message.message_id, outcomes.RATE_LIMITED)
            message.fail()
            raise error
        delay = decision.wait_ms + _jitter(decision.wait_ms)
        deferred = message.copy(
            options={
                DEFERRALS: int(options.get(DEFERRALS, 0)) + 1,
                SINCE: int(options.get(SINCE, decision.now_ms)),
                **({SLOT: decision.slot_ms} if decision.slot_ms >= 0 else {}),
            }
        )
        outcomes.note(message.message_id, outcomes.DEFERRED)
        broker.enqueue(deferred, delay=delay)
        logger.info(
            "job.rate_limited",
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            limit="rate" if decision.outcome is Outcome.WAIT_FOR_RATE else "concurrency",
            delay_ms=delay,
            deferrals=deferred.options[DEFERRALS],
        )
        raise SkipMessage("rate limited: deferred")

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._release(message)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._release(message)

    def _unavailable(self, actor_name: str) -> str:
        return f"actor {actor_name!r} declares limits but {self.no_store_reason}"

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if self._without_store:
            logger.error(
                "rate_limits.unavailable",
                actors=sorted(self._without_store),
                why=self.no_store_reason,
                jobs_dead_lettered_as=LIMITS_UNAVAILABLE,
            )
        if self.store is not None and any(
            limits and limits.concurrency for limits in self._limits.values()
        ):
            self._stopping.clear()
            self._renewer = threading.Thread(
                target=self._renew_leases, name="jobkit-lease-renewer", daemon=True
            )
            self._renewer.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self._stopping.set()

    def _release(self, message: MessageProxy) -> None:
        if not self._leases:  # the common case: no lease held in this process
            return
        delivery = self._delivery.end(message)
        if delivery is None:
            return
        with self._leases_lock:
            lease = self._leases.pop(delivery["lease_id"], None)
        if lease is None or self.store is None:
            return
        key, lease_id, started = lease
        try:
            self.store.release(key, lease_id, int((time.monotonic() - started) * 1000))
        except redis.RedisError as error:
            logger.warning(
                "could not release concurrency slot %s (expires by itself): %s", key, error
            )

    def _renew_leases(self) -> None:
        assert self.store is not None
        while not self._stopping.wait(self.lease_ms / 3000):
            with self._leases_lock:
                held = [(key, lease_id) for key, lease_id, _ in self._leases.values()]
            try:
                self.store.renew(held, self.lease_ms)
            except redis.RedisError as error:
                logger.warning("rate_limits.renew_failed", leases=len(held), error=str(error))


def _jitter(wait_ms: int) -> int:
    """Up to 10% later (never earlier: an earlier start could exceed the rate), at most 250 ms."""
    return random.randint(0, max(1, min(wait_ms // 10, 250)))
