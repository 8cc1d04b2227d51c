"""RabbitMQ broker: construction with safe connection defaults, health check, queue depths."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
from dramatiq import Middleware
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, xq_name

from .errors import BrokerUnavailable
from .stats import QueueDepth
from .urls import mask_url

# Applied unless the URL sets them. A publish with confirms waits for the
# broker's ack; while RabbitMQ blocks publishers (memory or disk alarm) that
# wait would be endless without blocked_connection_timeout.
CONNECTION_DEFAULTS = {
    "heartbeat": "30",
    "blocked_connection_timeout": "30",
    "socket_timeout": "10",
    "stack_timeout": "15",
    "connection_attempts": "3",
    "retry_delay": "1",
}


def with_connection_defaults(url: str) -> str:
    """``url`` with :data:`CONNECTION_DEFAULTS` added to its query string where absent."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in CONNECTION_DEFAULTS.items():
        query.setdefault(name, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


def build_rabbitmq_broker(url: str, middleware: list[Middleware]) -> RabbitmqBroker:
    """A RabbitmqBroker with publisher confirms on; connects lazily."""
    return RabbitmqBroker(
        url=with_connection_defaults(url), confirm_delivery=True, middleware=middleware
    )


def check_rabbitmq(url: str) -> None:
    """Open and close one connection; raise a one-line :class:`BrokerUnavailable` on failure."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(with_connection_defaults(url)))
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(
            f"RabbitMQ at {mask_url(url)} refused the credentials (ACCESS_REFUSED); "
            "check the user and password in JOBKIT_BROKER_URL"
        ) from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise BrokerUnavailable(
            f"RabbitMQ at {mask_url(url)} denied access to the virtual host; "
            "check the vhost in JOBKIT_BROKER_URL and the user's permissions"
        ) from None
    except (pika.exceptions.AMQPError, OSError) as error:
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {mask_url(url)}: {_reason(error)}; "
            "is the server running and JOBKIT_BROKER_URL right?"
        ) from None
    connection.close()


def _reason(error: BaseException) -> str:
    """The root cause pika wraps (often several levels deep), as short text."""
    for _ in range(5):
        inner = getattr(error, "exception", None) or (error.args[0] if error.args else None)
        if not isinstance(inner, BaseException):
            break
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    return text.rstrip(".")


def rabbitmq_queue_depths(url: str, queues: Iterable[str]) -> list[QueueDepth]:
    """Depths of ``queues`` (AMQP cannot list queues, so the caller names them).

    Uses passive declares, so a queue that does not exist yet is reported as
    empty and is not created.
    """
    connection = pika.BlockingConnection(pika.URLParameters(with_connection_defaults(url)))
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
