"""The RabbitMQ consumer: acks in batches, dead letters kept in jobkit's store."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import pika
import pika.exceptions
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed

from middleware.dramatiq_seam import (
    RabbitmqConsumerBase,
    RabbitmqDelivery,
    delivery_tag,
    redeclare_later,
)

from ..dead_letter_store import keep_failed, keep_undecodable
from ..decoding import UndecodableMessage, decode_message


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
        delivery = RabbitmqDelivery(method.redelivered, method.delivery_tag, message)
        self.broker.emit_after("receive", delivery)
        return delivery

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
