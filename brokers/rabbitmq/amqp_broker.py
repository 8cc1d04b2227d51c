"""The RabbitMQ broker: PriorityRabbitmqBroker (priority queues, bounded publishes, bulk
sends, clear declare errors) and build_rabbitmq_broker, which configures it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
from dramatiq import Message, Middleware
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import current_millis, dq_name, q_name
from dramatiq.errors import BrokerConnectionError, ConnectionClosed

from jobkit.errors import BrokerBlocked, BrokerConfigError, JobkitError
from middleware.dramatiq_seam import (
    MAX_ENQUEUE_ATTEMPTS,
    RabbitmqBrokerBase,
    RabbitmqConsumerBase,
    redeclare_later,
)
from middleware.priorities import PriorityConfig

from ..bulk import BulkSendError
from ..decoding import MessageRules
from ..encoding import encode_message
from ..hook_cache import CachedHooks
from ..send_hooks import before_enqueue, enqueue_failed, failing_as_one
from .amqp_confirms import ConfirmedPublisher
from .amqp_connection import error_reason, with_connection_defaults
from .amqp_consumer import DeadLetteringConsumer
from .amqp_priority import MAX_PRIORITY, NORMAL_PRIORITY, AmqpPriority


class QueueNeedsMigration(JobkitError, BrokerConnectionError):
    """A queue exists with arguments jobkit cannot use (declared without x-max-priority).

    A ``BrokerConnectionError`` so a worker logs it as one line and keeps
    retrying instead of dying with a traceback.
    """


class PriorityRabbitmqBroker(CachedHooks, RabbitmqBrokerBase):
    """RabbitmqBroker whose queues carry ``x-max-priority`` and whose declare errors are clear."""

    #: Size limit and signing keys its consumers apply (set by ``build_broker``).
    message_rules: MessageRules = MessageRules()

    #: Seconds to wait for the confirms of one bulk batch.
    bulk_confirm_timeout = 30.0

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Dramatiq's confirmed publish, except that a blocked publish fails at once.

        RabbitMQ blocks publishers during a memory or disk alarm; after
        ``blocked_connection_timeout`` pika gives up, and Dramatiq would then
        reconnect and block again, six times over. jobkit raises
        ``BrokerBlocked`` after the first timeout instead, so every send is
        bounded by that timeout.
        """
        canonical_queue_name = queue_name = message.queue_name
        if delay is not None:
            queue_name = dq_name(queue_name)
            message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
        attempts = 0
        while True:
            try:
                self.declare_queue(canonical_queue_name, ensure=True)
                pending = before_enqueue(self, message, delay)
                if pending is not None:
                    return pending  # a duplicate of a pending unique job: nothing is sent
                with failing_as_one(self, message, delay):
                    self.channel.basic_publish(
                        exchange="",
                        routing_key=queue_name,
                        body=encode_message(message),
                        properties=pika.BasicProperties(
                            delivery_mode=2,
                            priority=message.options.get("broker_priority", NORMAL_PRIORITY),
                        ),
                        mandatory=self.confirm_delivery,
                    )
                self.emit_after("enqueue", message, delay)
                return message
            except pika.exceptions.ConnectionBlockedTimeout:
                del self.connection
                raise BrokerBlocked(
                    f"RabbitMQ blocked the publish of job {message.actor_name} "
                    f"{message.message_id} (a memory or disk alarm) for longer than "
                    "blocked_connection_timeout; it was not confirmed (it may still be queued "
                    "once the alarm clears): send it again then (rabbitmqctl list_alarms)"
                ) from None
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                del self.connection  # the next attempt opens a new connection and channel
                if isinstance(e, pika.exceptions.UnroutableError):
                    redeclare_later(self, q_name(queue_name))
                attempts += 1
                if attempts >= MAX_ENQUEUE_ATTEMPTS:
                    raise ConnectionClosed(e) from None

    def enqueue_many(
        self, messages: list[Message], *, delay: int | None = None, batch_size: int = 1000
    ) -> list[Message]:
        """Publish with streaming publisher confirms; returns once all are confirmed.

        Up to ``batch_size`` messages may await their confirms at once, so the
        broker persists one batch while the next is sent, instead of one round
        trip per message (``brokers.bulk``). pika's BlockingChannel waits for
        every confirm in turn; its underlying Channel publishes without waiting
        and reports confirms through a callback, driven here by the
        connection's event loop.
        """
        # All through before_enqueue first: an invalid message fails the call before any is sent.
        answers: list[Message] = []
        prepared: list[Message] = []
        try:
            for message in messages:
                queued, pending = self._prepare(message, delay)
                if pending is None:
                    prepared.append(queued)
                answers.append(pending or queued)
        except BaseException:
            enqueue_failed(self, prepared, delay)
            raise
        connection = pika.BlockingConnection(self.parameters)
        publisher: ConfirmedPublisher | None = None
        try:
            publisher = ConfirmedPublisher(connection, window=batch_size)
            published: list[Message] = []
            try:
                for message in prepared:
                    publisher.publish(message)
                    published.append(message)
                publisher.wait_all(self.bulk_confirm_timeout)
            except (pika.exceptions.AMQPError, OSError) as error:
                publisher.failure = error_reason(error)
            sent = [m for m in published if m.message_id in publisher.accepted]
            for message in sent:
                self.emit_after("enqueue", message, delay)
            if len(sent) < len(prepared):
                accepted = {m.message_id for m in sent}
                not_sent = [m for m in published if m.message_id not in accepted]
                not_sent += prepared[len(published) :]
                enqueue_failed(self, not_sent, delay)
                raise BulkSendError(publisher.failure, not_sent, sent)
            return answers
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                if publisher is not None:
                    publisher.release()
                connection.close()

    def _prepare(self, message: Message, delay: int | None) -> tuple[Message, Message | None]:
        # As RabbitmqBroker.enqueue: declare the queue, move delayed messages to
        # the delay queue with an eta, then before_enqueue (which sets the priority);
        # with the pending job's message when this one duplicates it.
        self.declare_queue(message.queue_name, ensure=True)
        if delay is not None:
            message = message.copy(
                queue_name=dq_name(message.queue_name), options={"eta": current_millis() + delay}
            )
        return message, before_enqueue(self, message, delay)

    @property
    def consumer_class(self) -> type[RabbitmqConsumerBase]:
        return DeadLetteringConsumer

    def queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments = super().queue_arguments(queue_name)
        # Classic queue storage v2 (RabbitMQ 3.10+; ignored before, the only one in 4.x)
        # wins back what x-max-priority costs a v1 queue in throughput.
        arguments["x-queue-version"] = 2
        return arguments

    @contextlib.contextmanager
    def declaring(self, queue_name: str) -> Iterator[None]:
        """A queue that exists with other arguments: :class:`QueueNeedsMigration`, explained."""
        try:
            yield
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != 406:
                raise
            del self.channel  # the broker closed it
            differs = re.search(r"inequivalent arg '([^']+)'", error.reply_text or "")
            raise QueueNeedsMigration(
                f"RabbitMQ queue {queue_name!r} already exists with other arguments "
                f"({differs.group(1) if differs else 'queue arguments'} differs; jobkit declares "
                f"x-max-priority={MAX_PRIORITY} and x-queue-version=2 for priorities), "
                "so it was made by plain Dramatiq or an older jobkit. Migrate: stop producers, "
                f"let workers drain it, delete it (rabbitmqctl delete_queue {queue_name}), then "
                "start jobkit, which re-declares it"
            ) from None


def build_rabbitmq_broker(
    url: str, middleware: list[Middleware], priority_config: PriorityConfig
) -> RabbitmqBroker:
    """A priority-aware RabbitmqBroker with publisher confirms on; connects lazily."""
    if priority_config.mode != "strict":
        raise BrokerConfigError(
            f"JOBKIT_PRIORITY_MODE={priority_config.mode} needs a Redis or embedded broker: "
            "RabbitMQ always delivers the most urgent message first; use strict with RabbitMQ"
        )
    # Runs after Priorities (which comes first in the stack) has stamped the level.
    return PriorityRabbitmqBroker(
        url=with_connection_defaults(url),
        confirm_delivery=True,
        max_priority=MAX_PRIORITY,
        middleware=[*middleware, AmqpPriority()],
    )
