"""The app the demo's workers load: ``dramatiq jobkit.demo.run_workers:broker -Q <queues>``.

The shipped jobs, consuming the queues given with ``-Q`` (one demo run's, see
:mod:`.run_queues`) and no other. No actor declares those queues, and a Dramatiq
worker consumes declared queues only: :class:`ConsumeGivenQueues` declares them
before the worker boots.
"""

from __future__ import annotations

from dramatiq import Broker, Middleware, Worker

from jobkit.app import load_app
from middleware.dramatiq_seam import worker_queues

from .tour import SHIPPED_JOBS


class ConsumeGivenQueues(Middleware):
    """Declares the queues a worker was given (``-Q``), so that it consumes them."""

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        for name in sorted(worker_queues(worker)):
            broker.declare_queue(name)


broker = load_app(SHIPPED_JOBS)
broker.add_middleware(ConsumeGivenQueues())
