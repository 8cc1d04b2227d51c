"""Deleting queues with everything in them, on any broker: :func:`delete_queues`.

For queues that are done with for good (``jobkit demo`` deletes its run's queues
when the run ends): what they hold is dropped, ready, delayed and dead-lettered.
"""

from __future__ import annotations

from collections.abc import Iterable

from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name


def delete_queues(broker: Broker, names: Iterable[str]) -> None:
    """Delete the queues ``names`` (canonical names), their delay and dead-letter queues too.

    On RabbitMQ the queues are deleted. On Redis every key of the queue goes:
    its lists and messages (``flush``), and what each worker kept for it (the
    acks of messages it held, its last fetch), which the dead-worker sweep would
    otherwise clear only while some worker still consumes the queue.
    """
    for name in sorted(names):
        if isinstance(broker, RabbitmqBroker):
            for queue in (name, dq_name(name), xq_name(name)):
                broker.channel.queue_delete(queue)
        elif isinstance(broker, RedisBroker):
            broker.flush(name)
            client = broker.client
            for queue in (name, dq_name(name)):
                # $namespace:__acks__.$worker_id.$queue, $namespace:__fetches__.$worker_id.$queue
                for kind in ("__acks__", "__fetches__"):
                    for key in client.scan_iter(match=f"{broker.namespace}:{kind}.*.{queue}"):
                        client.delete(key)
        else:
            broker.flush(name)
