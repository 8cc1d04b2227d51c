"""RabbitMQ seen from outside a worker, each on a connection of its own: the health check
(check_rabbitmq) and queue depths (rabbitmq_queue_depths).
"""

from __future__ import annotations

from collections.abc import Iterable

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, xq_name

from jobkit.errors import BrokerRefused, BrokerUnavailable
from jobkit.settings import mask_url

from ..queue_depth import QueueDepth
from .amqp_connection import error_reason, with_connection_defaults


def check_rabbitmq(url: str) -> None:
    """Open and close one connection; raise a one-line :class:`BrokerUnavailable` on failure."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(with_connection_defaults(url)))
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerRefused(
            f"RabbitMQ at {mask_url(url)} refused the credentials (ACCESS_REFUSED); "
            "check the user and password in JOBKIT_BROKER_URL"
        ) from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise BrokerRefused(
            f"RabbitMQ at {mask_url(url)} denied access to the virtual host; "
            "check the vhost in JOBKIT_BROKER_URL and the user's permissions"
        ) from None
    except (pika.exceptions.AMQPError, OSError) as error:
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {mask_url(url)}: {error_reason(error)}; "
            "is the server running and JOBKIT_BROKER_URL right?"
        ) from None
    connection.close()


def rabbitmq_queue_depths(broker: RabbitmqBroker, queues: Iterable[str]) -> list[QueueDepth]:
    """Depths of ``queues`` (AMQP cannot list queues, so the caller names them).

    Uses a connection of its own, made with the broker's parameters, and
    passive declares, so a queue that does not exist yet is reported as empty
    and is not created.
    """
    connection = pika.BlockingConnection(broker.parameters)
    try:
        depths = []
        for name in sorted(set(queues)):
            counts = [_passive_count(connection, q) for q in (name, dq_name(name), xq_name(name))]
            depths.append(QueueDepth(name, counts[0], counts[1], counts[2], in_flight=None))
        return depths
    finally:
        connection.close()


def _passive_count(connection: pika.BlockingConnection, queue: str) -> int:
    channel = connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return 0
        raise
    finally:
        if channel.is_open:
            channel.close()
