"""Dead-worker recovery every few seconds: :class:`DeadWorkerSweep` and :func:`sweep`."""

from __future__ import annotations

import logging
import threading

import redis
from dramatiq import Broker, Middleware, Worker

from middleware.dramatiq_seam import redis_command

from .broker import PriorityRedisBroker

logger = logging.getLogger("jobkit.brokers.redis")

#: How often each worker process looks for dead workers (less when the timeout is short).
SWEEP_INTERVAL_S = 5.0


class DeadWorkerSweep(Middleware):
    """Gives a dead worker's jobs back every few seconds, instead of by chance.

    Dramatiq returns the unacked jobs of a worker whose heartbeat stopped only
    in "maintenance", which runs on a random 0.1% of broker calls: with an idle
    fleet that can take many minutes. Each worker process runs maintenance on
    every queue it knows every ``interval_s`` instead, so a SIGKILLed worker's
    jobs run again within the heartbeat timeout plus that interval.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(broker,), name="jobkit-dead-worker-sweep", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self._stopping.set()

    def _run(self, broker: PriorityRedisBroker) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                sweep(broker)
            except redis.RedisError as error:
                logger.warning(
                    "dead-worker sweep failed (next in %.0f s): %s", self.interval_s, error
                )


def sweep(broker: PriorityRedisBroker) -> None:
    """Requeue the unacked jobs of every dead worker, on every queue this broker knows."""
    for queue_name in sorted(broker.get_declared_queues() | broker.get_declared_delay_queues()):
        redis_command(broker, "sweep")(queue_name)
