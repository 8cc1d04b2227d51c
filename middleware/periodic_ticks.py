"""Periodic jobs through periodiq, run once per tick however many schedulers send them.

Actor option (periodiq's)::

    from periodiq import cron

    @dramatiq.actor(periodic=cron("*/5 * * * *"))
    def snapshot() -> None: ...

``periodiq actors`` sends such an actor's message at each tick, with the tick
in ``options["scheduled_at"]``. Two schedulers (a standby, an overlapping
deploy) send every tick twice, and each one sends the current minute when it
starts. So before a periodic job runs, ``SET NX`` on
``jobkit:periodic:<actor>:<minute of the tick>`` lets one message of the tick
through; the others are skipped (acked, logged as ``periodic.duplicate_tick``).
A retry or a redelivery of the winner has the same message id and runs.
A message sent by hand (no ``scheduled_at``) always runs.

The lock lives in jobkit's state Redis (``brokers.state``): the Redis or
embedded broker's own server, ``JOBKIT_STATE_URL`` on RabbitMQ. Without one
(RabbitMQ without that variable) ticks are not deduplicated: run a single
``periodiq`` process; workers say so in a WARNING at boot.

periodiq itself skips a tick older than ``JOBKIT_PERIODIC_SKIP_DELAY`` seconds
(default 30) when it is processed, so a backlog does not replay old ticks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import structlog
from dramatiq import Broker, Worker
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage
from periodiq import PeriodiqMiddleware

from .hooks import UsesStateRedis

logger = structlog.get_logger("jobkit.periodic")

DEFAULT_SKIP_DELAY_S = 30
KEY_PREFIX = "jobkit:periodic"
#: How long a tick's winner is remembered: far past any skip delay, so a late
#: duplicate is skipped by periodiq or by this lock, never run.
LOCK_TTL_S = 3600


def periodiq_middleware(skip_delay: int = DEFAULT_SKIP_DELAY_S) -> PeriodiqMiddleware:
    """periodiq's own middleware (declares the ``periodic`` option, drops stale ticks).

    A tick older than ``skip_delay`` seconds (``JOBKIT_PERIODIC_SKIP_DELAY``) is dropped.
    """
    return PeriodiqMiddleware(skip_delay=skip_delay)


def tick_of(scheduled_at: str) -> str:
    """The minute a tick belongs to, in UTC: periodiq's cron has minute resolution."""
    moment = datetime.fromisoformat(scheduled_at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


class DuplicateTick(SkipMessage):
    """Another message of the same periodic tick already ran (or is running)."""


class PeriodicTicks(UsesStateRedis):
    """Lets one message per periodic actor and tick run (see the module docstring).

    Tick locks live in the state Redis; without one they are off.
    """

    def __init__(self) -> None:
        self._periodic: set[str] = set()

    def after_declare_actor(self, broker: Broker, actor: Any) -> None:
        if "periodic" in actor.options:
            self._periodic.add(actor.actor_name)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if self._periodic and self.client is None:
            logger.warning(
                "periodic.ticks_not_deduplicated",
                actors=sorted(self._periodic),
                why=self.no_store_reason,
                advice="run exactly one periodiq process",
            )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if message.actor_name not in self._periodic or self.client is None:
            return
        scheduled_at = message.options.get("scheduled_at")
        if not scheduled_at:
            return  # sent by hand
        tick = tick_of(scheduled_at)
        key = f"{KEY_PREFIX}:{message.actor_name}:{tick}"
        if self.client.set(key, message.message_id, nx=True, ex=LOCK_TTL_S):
            return
        winner = cast("bytes | None", self.client.get(key))  # a client without decode_responses
        if winner is not None and winner.decode() == message.message_id:
            return  # a retry or redelivery of the job that won this tick
        logger.info(
            "periodic.duplicate_tick",
            message_id=message.message_id,
            actor=message.actor_name,
            tick=tick,
            ran_as=winner.decode() if winner is not None else None,
        )
        raise DuplicateTick(f"tick {tick} of {message.actor_name} already ran")
