"""Crash loops: a job that kills its worker is dead-lettered after a few crashes.

A job that segfaults, runs out of memory or calls ``os._exit`` takes its
worker process down before any ``after_process_message`` runs, so nothing
marks it failed: the broker gives it back and the next worker dies the same
way, forever (Dramatiq #213).

Brokers flag a delivery of a message a dead worker held (RabbitMQ's
``redelivered``; jobkit's Redis fetch reports it too). Such a job's starts are
counted in the state Redis (``jobkit:crashes:<message id>``) and the count is
cleared when the job ends in any way a worker survives. When the count reaches
``JOBKIT_MAX_CRASHES`` (3), the worker holding the job has died that many times
in a row, the job running in all but perhaps the first (a prefetched job dies
with its worker unstarted): it is dead-lettered (reason ``crash_loop``) instead
of run again. A first delivery costs nothing; only redelivered jobs pay two
Redis calls.

Without a state Redis (RabbitMQ without ``JOBKIT_STATE_URL``) nothing is
counted; workers say so in a WARNING at boot.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
import structlog
from dramatiq import Broker, Worker
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from jobkit.errors import JobkitError

from . import outcomes
from .hooks import UsesStateRedis

logger = structlog.get_logger("jobkit.crash_loops")

MAX_CRASHES_ENV = "JOBKIT_MAX_CRASHES"
DEFAULT_MAX_CRASHES = 3
KEY_PREFIX = "jobkit:crashes"
#: A count outlives any plausible gap between a crash and the redelivery.
COUNT_TTL_S = 7 * 86_400
CRASH_LOOP = "crash_loop"


class CrashLoop(JobkitError, SkipMessage):
    """The job was running each time its worker died, ``JOBKIT_MAX_CRASHES`` times."""

    reason = CRASH_LOOP


class CrashLoops(UsesStateRedis):
    """Counts starts of redelivered jobs; dead-letters a job that keeps killing workers.

    Counts live in the state Redis; without one, counting is off.
    """

    def __init__(self, limit: int = DEFAULT_MAX_CRASHES) -> None:
        #: Deaths with the job running before it is dead-lettered (``JOBKIT_MAX_CRASHES``).
        self.limit = limit
        #: Message ids whose count this process raised and must clear when they end.
        self._counted: set[str] = set()
        self._lock = threading.Lock()

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if self.client is None:
            logger.warning(
                "crash_loops.off",
                why=self.no_store_reason,
                risk="a job that kills its worker is redelivered forever",
            )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if self.client is None or not getattr(message, "redelivered", False):
            return
        key = f"{KEY_PREFIX}:{message.message_id}"
        with self.client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, COUNT_TTL_S)
            starts, _ = pipe.execute()
        # The worker holding this job died `starts` times in a row (it ran in all but
        # perhaps the first: a prefetched job dies with its worker without running).
        if starts >= self.limit:
            self.client.delete(key)
            outcomes.note(message.message_id, CRASH_LOOP)
            message.fail()
            logger.error(
                "job.crash_loop",
                message_id=message.message_id,
                actor=message.actor_name,
                queue=message.queue_name,
                crashes=starts,
            )
            raise CrashLoop(
                f"job {message.message_id} of {message.actor_name} was running each time its "
                f"worker died, {starts} times in a row; dead-lettered instead of run again"
            )
        with self._lock:
            self._counted.add(message.message_id)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._clear(message)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._clear(message)

    def _clear(self, message: MessageProxy) -> None:
        if not self._counted or message.message_id not in self._counted:
            return
        with self._lock:
            self._counted.discard(message.message_id)
        if self.client is not None:
            try:
                self.client.delete(f"{KEY_PREFIX}:{message.message_id}")
            except redis.RedisError as error:
                logger.warning(
                    "crash_loops.clear_failed", message_id=message.message_id, error=str(error)
                )
