"""Stock Dramatiq brokers (default middleware, default settings): the baseline."""

from __future__ import annotations

from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker


def plain_broker(url: str, *, confirm_delivery: bool = False) -> Broker:
    """Dramatiq's own broker for ``url`` (redis://, unix:// or amqp://), as users build it."""
    if url.startswith(("amqp://", "amqps://")):
        return RabbitmqBroker(url=url, confirm_delivery=confirm_delivery)
    return RedisBroker(url=url)
