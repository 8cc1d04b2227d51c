"""RabbitMQ broker: priorities, safe connection defaults, health check, queue depths.

Priorities use RabbitMQ's own: queues are declared with ``x-max-priority`` and
each message is published with its level's AMQP priority (see
``middleware.priorities.LEVEL_NUMBERS``), so RabbitMQ hands the most urgent
ready message to the next consumer with room. Weighted mode cannot be built on
that and is refused at start-up.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import BrokerConnectionError, ConnectionClosed

from jobkit.errors import BrokerBlocked, BrokerConfigError, BrokerUnavailable, JobkitError
from jobkit.settings import mask_url
from middleware.dramatiq_seam import (
    MAX_ENQUEUE_ATTEMPTS,
    RabbitmqBrokerBase,
    RabbitmqConsumerBase,
    RabbitmqDelivery,
    delivery_tag,
    redeclare_later,
)
from middleware.priorities import DEFAULT_LEVEL, LEVEL_NUMBERS, PriorityConfig, message_level

from .bulk import BulkSendError
from .dead_letter_store import keep_failed, keep_undecodable
from .decoding import MessageRules, UndecodableMessage, decode_message
from .encoding import encode_message
from .hook_cache import CachedHooks
from .pika_seam import FrameGatherer, channel_impl
from .queue_depth import QueueDepth

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


MAX_PRIORITY = max(LEVEL_NUMBERS.values())
#: The AMQP priority of a message that carries no level.
NORMAL_PRIORITY = LEVEL_NUMBERS[DEFAULT_LEVEL]


class QueueNeedsMigration(JobkitError, BrokerConnectionError):
    """A queue exists with arguments jobkit cannot use (declared without x-max-priority).

    A ``BrokerConnectionError`` so a worker logs it as one line and keeps
    retrying instead of dying with a traceback.
    """


class DeadLetteringConsumer(RabbitmqConsumerBase):
    """Acks in batches; keeps rejected and undecodable messages in jobkit's dead-letter store.

    Dramatiq acks each message with its own callback into the connection's
    I/O loop (a wake-up, a frame and a socket write per job). Here worker
    threads queue their acks and one callback sends all that gathered, as a
    single ``multiple`` ack when no unsettled delivery lies below them.

    Dramatiq nacks rejected and undecodable messages to the queue's ``.XQ``
    (via RabbitMQ's dead-letter exchange), without the reason; that stays the
    fallback when the store (a Redis, see ``brokers.dead_letter_store``) cannot be
    written.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Guards known_tags, the tags to ack and the nacks in flight together, so
        # the floor computed by _send_acks never lets a multiple ack cover a tag
        # that is being nacked or is not yet settled.
        self._settle_lock = threading.Lock()
        self._to_ack: list[int] = []
        self._acks_scheduled = False
        self._nacking: set[int] = set()

    def __next__(self) -> MessageProxy | None:
        try:
            method, _properties, body = next(self.iterator)
            if method is None:
                return None
        except (
            AssertionError,
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.AMQPChannelError,
        ) as error:
            # As Dramatiq: a vanished queue is re-declared when the consumer restarts.
            if getattr(error, "reply_code", None) == 404:
                redeclare_later(self.broker, q_name(self.queue_name))
            raise ConnectionClosed(error) from None
        try:
            message = decode_message(body, self.broker.message_rules)
        except UndecodableMessage as error:
            if keep_undecodable(self.broker, self.queue_name, body, error):
                self._settle(method.delivery_tag, ack=True)
            else:
                self._settle(method.delivery_tag, ack=False)
            return None
        with self._settle_lock:
            self.known_tags.add(method.delivery_tag)
        return RabbitmqDelivery(method.redelivered, method.delivery_tag, message)

    def ack(self, message: MessageProxy) -> None:
        self._settle_known(message, ack=True)

    def nack(self, message: MessageProxy) -> None:
        """Keep a rejected message as a dead letter, then ack it; nothing for an unknown tag."""
        with self._settle_lock:
            known = delivery_tag(message) in self.known_tags
        if not known:
            # Delivered on a connection since closed: RabbitMQ delivers it again, so it
            # is not dead, and a record now would list a job that is about to run.
            self.logger.warning("Failed to nack message: not in known tags.")
            return
        # The store write happens outside the lock (a Redis round trip); the tag stays
        # in known_tags meanwhile, so no multiple ack can cover it.
        self._settle_known(message, ack=keep_failed(self.broker, message))

    def _settle_known(self, message: MessageProxy, *, ack: bool) -> None:
        tag = delivery_tag(message)
        with self._settle_lock:
            if tag not in self.known_tags:
                # Delivered on a connection since closed: RabbitMQ redelivers it.
                self.logger.warning("Failed to settle message: not in known tags.")
                return
            # Leaving known_tags and joining the acks in one step: _send_acks
            # must never see a tag in neither.
            self.known_tags.remove(tag)
            callback = self._queue_settlement(tag, ack=ack)
        self._schedule(callback)

    def _settle(self, tag: int, *, ack: bool) -> None:
        with self._settle_lock:
            callback = self._queue_settlement(tag, ack=ack)
        self._schedule(callback)

    def _queue_settlement(self, tag: int, *, ack: bool) -> Any:
        # The callback to schedule, or None when one already scheduled will send it.
        if not ack:
            self._nacking.add(tag)
            return partial(self._send_nack, tag)
        self._to_ack.append(tag)
        if self._acks_scheduled:
            return None
        self._acks_scheduled = True
        return self._send_acks

    def _schedule(self, callback: Any) -> None:
        if callback is None:
            return
        try:
            self.connection.add_callback_threadsafe(callback)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
            raise ConnectionClosed(error) from None

    def _send_acks(self) -> None:
        # Runs in the connection's I/O loop (the consumer thread).
        with self._settle_lock:
            tags, self._to_ack = sorted(self._to_ack), []
            self._acks_scheduled = False
            unsettled = self.known_tags | self._nacking
            floor = min(unsettled) if unsettled else None
        covered = [tag for tag in tags if floor is None or tag < floor]
        if covered:
            self.channel.basic_ack(covered[-1], multiple=True)
        for tag in tags[len(covered) :]:
            self.channel.basic_ack(tag)

    def _send_nack(self, tag: int) -> None:
        try:
            self.channel.basic_nack(tag, requeue=False)
        finally:
            with self._settle_lock:
                self._nacking.discard(tag)


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
                self.emit_before("enqueue", message, delay)
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
        prepared = [self._prepare(message, delay) for message in messages]
        connection = pika.BlockingConnection(self.parameters)
        publisher: _ConfirmedPublisher | None = None
        try:
            publisher = _ConfirmedPublisher(connection, window=batch_size)
            published: list[Message] = []
            try:
                for message in prepared:
                    publisher.publish(message)
                    published.append(message)
                publisher.wait_all(self.bulk_confirm_timeout)
            except (pika.exceptions.AMQPError, OSError) as error:
                publisher.failure = _reason(error)
            sent = [m for m in published if m.message_id in publisher.accepted]
            for message in sent:
                self.emit_after("enqueue", message, delay)
            if len(sent) < len(messages):
                accepted = {m.message_id for m in sent}
                not_sent = [m for m in published if m.message_id not in accepted]
                raise BulkSendError(publisher.failure, not_sent + prepared[len(published) :], sent)
            return sent
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                if publisher is not None:
                    publisher.release()
                connection.close()

    def _prepare(self, message: Message, delay: int | None) -> Message:
        # As RabbitmqBroker.enqueue: declare the queue, move delayed messages to
        # the delay queue with an eta, then before_enqueue (which sets the priority).
        self.declare_queue(message.queue_name, ensure=True)
        if delay is not None:
            message = message.copy(
                queue_name=dq_name(message.queue_name), options={"eta": current_millis() + delay}
            )
        self.emit_before("enqueue", message, delay)
        return message

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


class AmqpPriority(Middleware):
    """Publishes each message with its level's AMQP priority (read by RabbitmqBroker.enqueue).

    A caller's own ``broker_priority`` is kept: ``Priorities`` (first in the stack)
    has already made it the message's level, or refused it.
    """

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        # Only with a level: a number stamped on a levelless (normal) message would come
        # back with its retries as if the caller had chosen normal, overriding an actor
        # default the producer did not know. Those are published with NORMAL_PRIORITY.
        if "priority" in message.options:
            message.options["broker_priority"] = LEVEL_NUMBERS[message_level(broker, message)]


class _ConfirmedPublisher:
    """Publishes on a channel of its own in confirm mode, keeping at most ``window`` unconfirmed."""

    def __init__(self, connection: pika.BlockingConnection, window: int) -> None:
        self.connection = connection
        self.channel = channel_impl(connection.channel())  # publishes without waiting
        self.window = max(window, 1)
        self.failure = "not confirmed"
        self.accepted: set[str] = set()
        self._next_tag = 1
        self._pending: dict[int, str] = {}
        self._returned: set[str] = set()
        self._properties: dict[Any, pika.BasicProperties] = {}
        # This connection is the publisher's own: its frames go out in few writes.
        self._frames = FrameGatherer(connection)
        ready: list[bool] = []
        self.channel.add_on_return_callback(self._on_return)
        self.channel.confirm_delivery(self._on_confirm, callback=lambda _frame: ready.append(True))
        self._run_until(lambda: bool(ready), 10.0)

    def release(self) -> None:
        """Write what is gathered and give pika its own writer back (closing frames go out)."""
        self._frames.release()

    def publish(self, message: Message) -> None:
        priority = message.options.get("broker_priority", NORMAL_PRIORITY)
        properties = self._properties.get(priority)
        if properties is None:  # one per level: building them costs more than the JSON
            properties = self._properties[priority] = pika.BasicProperties(
                delivery_mode=2, priority=priority
            )
        self.channel.basic_publish(
            "", message.queue_name, encode_message(message), properties, True
        )
        self._pending[self._next_tag] = message.message_id
        self._next_tag += 1
        if len(self._pending) >= self.window:
            # Let confirms in (and frames out) until half the window is free.
            self._run_until(lambda: len(self._pending) <= self.window // 2, 30.0)

    def wait_all(self, timeout: float) -> None:
        self._run_until(lambda: not self._pending, timeout)
        if self._pending:
            self.failure = f"no confirm within {timeout:.0f} s"
        self.accepted -= self._returned

    def _run_until(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self._frames.flush()
            # Short slices: the blocking connection does not return early for callbacks
            # of the channel underneath, only when its time limit runs out.
            self.connection.process_data_events(time_limit=0.002)
        self._frames.flush()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        accepted = isinstance(method, pika.spec.Basic.Ack)
        if not accepted:
            self.failure = "the broker nacked them"
        if method.multiple:
            tags = []
            for tag in self._pending:  # in publish order
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            message_id = self._pending.pop(tag, None)
            if accepted and message_id is not None:
                self.accepted.add(message_id)

    def _on_return(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        # Rare (the queue was deleted meanwhile): the body says which message came back.
        self.failure = "no queue to route them to"
        self._returned.add(Message.decode(body).message_id)


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
