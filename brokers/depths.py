"""How many messages wait in each queue, on any broker, dead letters included."""

from __future__ import annotations

import dataclasses

from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from jobkit.errors import BrokerConfigError

from .dead_letter_store import DeadLetterError, dead_letter_store
from .queue_depth import QueueDepth
from .rabbitmq.amqp_admin import rabbitmq_queue_depths
from .redis.depth_scan import redis_queue_depths


def queue_depths(broker: Broker, queues: set[str] | None = None) -> list[QueueDepth]:
    """Ready / delayed / dead-lettered (and, where known, in-flight) counts per queue.

    Covers the queues declared on ``broker`` plus ``queues``; on Redis also
    every queue found in the broker's namespace.
    """
    names = set(broker.get_declared_queues()) | set(queues or ())
    try:
        dead = dead_letter_store(broker).counts_by_queue()
    except DeadLetterError:  # no store (RabbitMQ without JOBKIT_STATE_URL): .XQ counts only
        dead = {}
    names |= set(dead)
    if isinstance(broker, RedisBroker):
        depths = redis_queue_depths(broker, names)
    elif isinstance(broker, RabbitmqBroker):
        depths = rabbitmq_queue_depths(broker, names)
    else:
        raise BrokerConfigError(f"queue depths are not supported on {type(broker).__name__}")
    # Dead letters live in jobkit's store; the broker's own .XQ holds only what
    # could not be stored (or what plain Dramatiq put there): both count.
    return [
        dataclasses.replace(d, dead_lettered=d.dead_lettered + dead.get(d.queue, 0)) for d in depths
    ]
