"""Does a broker answer, and how a worker that fetches nothing still shows it is alive.

:func:`check_broker` (one line if not), :class:`RefusedAtBoot` (a worker process of the
``dramatiq`` command stops at boot when the broker refuses its credentials), and
:func:`keep_alive`.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Iterator

from dramatiq import Broker, Middleware, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.cli import RET_CONNECT

from jobkit.errors import BrokerRefused
from middleware.dramatiq_seam import redis_command

from .rabbitmq.amqp_admin import check_rabbitmq
from .redis.checks import check_redis
from .urls import SPECS, spec_of

logger = logging.getLogger("jobkit.brokers")


def check_broker(broker: Broker) -> None:
    """Raise a one-line :class:`BrokerUnavailable` unless ``broker`` answers."""
    if isinstance(broker, RedisBroker):
        name = spec_of(broker).display_url if broker in SPECS else "the configured Redis"
        check_redis(broker, name)
    elif isinstance(broker, RabbitmqBroker):
        check_rabbitmq(spec_of(broker).url)


class RefusedAtBoot(Middleware):
    """A worker process of the ``dramatiq`` command stops at boot if the broker refuses it.

    With a wrong password, Dramatiq's consumers would reconnect forever, each attempt
    logging pika's or redis-py's errors (about a thousand lines in 15 s). Checked before
    any consumer starts, it is one CRITICAL line and Dramatiq's exit code for a broker
    connection that failed at start-up (``RET_CONNECT``, 3) for the whole group. A broker
    that does not answer at all is left to the consumers, which retry until it is up
    (a worker may start before its broker); ``jobkit worker`` refuses both up front.
    """

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # A Worker run inside some other program (tests, an embedding app) is its business.
        if multiprocessing.parent_process() is None:
            return
        try:
            with _quiet("pika"):  # its ERROR lines for each attempt say less than ours
                check_broker(broker)
        except BrokerRefused as error:
            logger.critical("%s; this worker process stops (exit code %d)", error, RET_CONNECT)
            # SystemExit, not an Exception: Dramatiq logs and ignores those in a hook. It
            # ends this process with the code, and Dramatiq then stops the whole group.
            raise SystemExit(RET_CONNECT) from None


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Drop the records of logger ``name`` (and its children) below CRITICAL meanwhile."""
    quieted = logging.getLogger(name)
    level = quieted.level
    quieted.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        quieted.setLevel(level)


def keep_alive(broker: Broker) -> None:
    """Tell the broker this worker is alive while it fetches nothing (e.g. throttled).

    Redis infers liveness from traffic: a worker silent for the heartbeat
    timeout is presumed dead and its unacked jobs are given to others.
    RabbitMQ's connection heartbeats need nothing from us.
    """
    if isinstance(broker, RedisBroker):
        for queue in sorted(broker.get_declared_queues())[:1]:
            redis_command(broker, "qsize")(queue)
