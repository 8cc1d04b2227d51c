"""The Redis consumer: fetches by level, acks in batches, dead-letters, gives back on close.

:class:`PriorityRedisConsumer` is what :class:`~brokers.redis.broker.PriorityRedisBroker`
consumes with; :class:`RedisMessage` is a message it fetched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any, Protocol

import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed

from middleware.dramatiq_seam import RedisConsumerBase, redis_command

from ..dead_letter_store import keep_failed, keep_undecodable
from ..decoding import UndecodableMessage, decode_message

logger = logging.getLogger("jobkit.brokers.redis")

#: How long closing a consumer (or the broker) waits for its pending acks to go out.
ACK_FLUSH_TIMEOUT_S = 2.0


class ConsumingBroker(Protocol):
    """What a consumer reads of its broker when it starts (a :class:`PriorityRedisBroker`).

    Named here, not imported: ``brokers.redis.broker`` imports this module.
    """

    namespace: str
    broker_id: str

    def take_orphans(self, queue_name: str) -> list[tuple[bytes, bytes | None, int]]: ...


class RedisMessage(MessageProxy):
    """A fetched message, and whether a dead worker held it before (as RabbitMQ's flag)."""

    def __init__(self, message: Message, *, redelivered: bool) -> None:
        super().__init__(message)
        self.redelivered = redelivered


class PriorityRedisConsumer(RedisConsumerBase):
    """Requeues to the right level list; dead-letters what it cannot decode and what fails.

    Dramatiq's consumer raises on bytes that are not a message, which restarts
    the consumer and leaves the id in its unacked set for good; this one keeps
    such bytes as an ``undecodable`` dead letter and moves on. A rejected
    message goes to jobkit's dead-letter store (``brokers.dead_letter_store``).

    Nothing fetched stays in this live worker's unacked set unless a thread of
    it holds the message: a consumer closed after a connection error hands what
    it could not give back to the queue's next consumer in this process. On a
    delay queue that includes the messages it handed out and that were not
    settled: Dramatiq's consumer thread drops its in-memory delay queue on a
    connection error, and those messages would otherwise never run.
    """

    message_cache: list[tuple[bytes, bytes | None, int]]

    def __init__(self, broker: ConsumingBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.message_cache = broker.take_orphans(queue_name)
        #: On a delay queue: message id -> fetched triple, for messages handed out and not
        #: settled (a canonical queue's are in the worker's queue, which outlives a restart).
        self.held: dict[str, tuple[bytes, bytes | None, int]] = {}
        self._is_delay_queue = queue_name.endswith(".DQ")
        self._unacked_key = f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}"

    def ack(self, message: MessageProxy) -> None:
        # On the current queue (a delayed message is acked on the delay queue), as Dramatiq.
        self.broker.ack_batcher(self.queue_name).add(message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)
        self.held.pop(message.message_id, None)

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                try:
                    fetched_triple = self.message_cache.pop(0)
                except IndexError:
                    fetched = []
                    if self.outstanding_message_count < self.prefetch:
                        self.message_cache = fetched = self.broker.do_fetch(
                            self.queue_name, self.prefetch - self.outstanding_message_count
                        )
                    if not fetched:
                        # Long-poll progressively up to the idle timeout, as Dramatiq does.
                        self.misses, backoff_ms = compute_backoff(
                            self.misses, max_backoff=self.timeout
                        )
                        time.sleep(backoff_ms / 1000)
                        return None
                    continue
                redis_id, data, redeliveries = fetched_triple
                self.misses = 0
                try:
                    message = decode_message(data, self.broker.message_rules)
                except UndecodableMessage as error:
                    self._keep_undecodable(redis_id, data, redeliveries, error)
                    continue
                message.options["redis_message_id"] = redis_id.decode()
                self.queued_message_ids.add(message.message_id)
                if self._is_delay_queue:
                    self.held[message.message_id] = fetched_triple
                received = RedisMessage(message, redelivered=redeliveries > 0)
                self.broker.emit_after("receive", received)
                return received
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise ConnectionClosed(error) from None

    def _keep_undecodable(
        self, redis_id: bytes, data: bytes | None, redeliveries: int, error: Exception
    ) -> None:
        # An id pushed straight onto the list has no payload: the id is what was written.
        raw = data if data is not None else redis_id
        if not keep_undecodable(self.broker, self.queue_name, raw, error):
            self.message_cache.insert(0, (redis_id, data, redeliveries))  # close() gives it back
            raise ConnectionClosed(redis.ConnectionError("dead-letter store unavailable"))
        redis_command(self.broker, "ack")(self.queue_name, redis_id)  # bytes: may not be UTF-8

    def nack(self, message: MessageProxy) -> None:
        redis_id = message.options["redis_message_id"]
        try:
            held = self.broker.client.sismember(self._unacked_key, redis_id)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise ConnectionClosed(error) from None  # the worker retries the nack
        if not held:
            # Dead-worker recovery gave it back while this worker stalled: it runs
            # (or ran) elsewhere, so listing it as dead here would be wrong.
            logger.warning(
                "job %s %s failed here after this worker stopped holding it (it stalled past "
                "the heartbeat timeout); it is not dead-lettered: it ran again elsewhere",
                message.actor_name,
                message.message_id,
            )
            self.queued_message_ids.discard(message.message_id)
            self.held.pop(message.message_id, None)
            return
        if keep_failed(self.broker, message):
            self.ack(message)
            return
        try:
            super().nack(message)  # Dramatiq's own dead-letter queue: the store is down
        except redis.TimeoutError as error:
            raise ConnectionClosed(error) from None  # the worker retries it
        self.held.pop(message.message_id, None)

    def requeue(self, messages: Iterable[Any]) -> None:
        messages = list(messages)
        pairs = [(m.options["redis_message_id"], m.options.get("priority")) for m in messages]
        self.broker.requeue_ids(self.queue_name, pairs)
        for message in messages:
            self.held.pop(message.message_id, None)

    def close(self) -> None:
        # Only a batcher this process already has: closing must not start one.
        batcher = self.broker._ack_batchers.get((os.getpid(), self.queue_name))
        if batcher is not None and not batcher.flush(ACK_FLUSH_TIMEOUT_S):
            logger.warning(
                "%d ack(s) on queue %s not sent at close; those jobs run again after "
                "the heartbeat timeout",
                batcher.pending,
                self.queue_name,
            )
        # Dramatiq drops its cache of fetched-but-unreturned messages on close,
        # leaving them to dead-worker recovery; give them back now instead.
        leftovers, self.message_cache = self.message_cache, []
        # What a delay queue's consumer thread still holds here it has dropped (see the class).
        leftovers += self.held.values()
        self.held = {}
        pairs = []
        for redis_id, data, _ in leftovers:
            try:
                level = decode_message(data).options.get("priority")
            except UndecodableMessage:
                level = None  # back on the normal list; dead-lettered when fetched again
            pairs.append((redis_id, level))
        try:
            self.broker.requeue_ids(self.queue_name, pairs)
        except redis.RedisError:
            self.broker.keep_orphans(self.queue_name, leftovers)
        super().close()
