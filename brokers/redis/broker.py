"""The priority-aware Redis broker: :class:`PriorityRedisBroker` and its key layout.

:class:`PriorityRedisBroker` is Dramatiq's ``RedisBroker`` with jobkit's copy of
its Lua dispatch script (``brokers/lua/dispatch.lua``), which keeps one id list per
priority level for each queue and fetches from them strictly (most urgent
non-empty level first) or weighted. Acks, nacks, the dead-letter queue, delay
queues and dead-worker recovery keep Dramatiq's key layout and behaviour.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from pathlib import Path
from typing import Any
from uuid import uuid4

import redis
from dramatiq import Message
from dramatiq.common import current_millis, dq_name

from jobkit.errors import BrokerFull, BrokerUnavailable
from middleware.dramatiq_seam import (
    RedisBrokerBase,
    RedisConsumerBase,
    pipeline_command,
    redis_command,
    script_command,
    use_dispatch_script,
)
from middleware.priorities import LEVELS, PriorityConfig

from ..acks import AckBatcher
from ..bulk import BulkSendError, batches
from ..decoding import MessageRules
from ..encoding import encode_message
from ..hook_cache import CachedHooks
from ..send_hooks import before_enqueue, enqueue_failed, failing_as_one
from .checks import _reason, is_out_of_memory
from .consumer import ACK_FLUSH_TIMEOUT_S, PriorityRedisConsumer

logger = logging.getLogger("jobkit.brokers.redis")

NAMESPACE = "dramatiq"
DISPATCH_SCRIPT = (Path(__file__).parent.parent / "lua" / "dispatch.lua").read_bytes()
#: Key suffix of each level's id list; normal uses the queue's own list.
LEVEL_SUFFIXES: dict[str, str] = {
    "critical": ":critical",
    "high": ":high",
    "normal": "",
    "low": ":low",
}


def level_suffix(level: Any) -> str:
    return LEVEL_SUFFIXES.get(level, "") if isinstance(level, str) else ""


class PriorityRedisBroker(CachedHooks, RedisBrokerBase):
    """RedisBroker whose canonical queues are priority-aware."""

    #: Size limit and signing keys its consumers apply (set by ``build_broker``).
    message_rules: MessageRules = MessageRules()
    #: A sweep is maintenance and nothing else; other calls keep Dramatiq's chance.
    maintenance_commands = frozenset({"sweep"})

    def __init__(self, *, priority_config: PriorityConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.priority_config = priority_config
        use_dispatch_script(self, DISPATCH_SCRIPT)
        self._weights = [priority_config.weights[level] for level in LEVELS]
        self._ack_batchers: dict[tuple[int, str], AckBatcher] = {}
        self._ack_batchers_lock = threading.Lock()
        # Per (pid, queue): the token of a fetch whose reply never came, and fetched
        # messages a closed consumer could not give back. Both are in this worker's
        # unacked set, where dead-worker recovery never looks while it heartbeats:
        # the queue's next consumer in this process takes them.
        self._unanswered_fetches: dict[tuple[int, str], str] = {}
        self._orphans: dict[tuple[int, str], list[tuple[bytes, bytes | None, int]]] = {}
        self._consumers_lock = threading.Lock()

    def ack_batcher(self, queue_name: str) -> AckBatcher:
        """This process's batcher for ``queue_name`` (kept across consumer restarts)."""
        key = (os.getpid(), queue_name)  # a forked child needs its own thread
        batcher = self._ack_batchers.get(key)
        if batcher is None:
            with self._ack_batchers_lock:
                batcher = self._ack_batchers.get(key)
                if batcher is None:
                    batcher = self._ack_batchers[key] = AckBatcher(
                        lambda ids: redis_command(self, "ack")(queue_name, *ids),
                        name=f"jobkit-acks-{queue_name}",
                    )
        return batcher

    def close(self) -> None:
        # Pending acks first: they need the connection pool that close() disconnects.
        with self._ack_batchers_lock:
            batchers, self._ack_batchers = self._ack_batchers, {}
        for (pid, queue_name), batcher in batchers.items():
            if pid == os.getpid() and batcher.stop(ACK_FLUSH_TIMEOUT_S):
                logger.warning(
                    "acks on queue %s not sent at close; those jobs run again after the "
                    "heartbeat timeout",
                    queue_name,
                )
        super().close()

    @property
    def consumer_class(self) -> type[RedisConsumerBase]:
        return PriorityRedisConsumer

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        # Dramatiq's RedisBroker.enqueue, plus the level's list, read after
        # before_enqueue has validated and stamped it.
        message, pending = self._prepare(message, delay)
        if pending is not None:
            return pending  # a duplicate of a pending unique job: nothing is sent
        suffix = "" if delay is not None else level_suffix(message.options.get("priority"))
        with failing_as_one(self, message, delay):
            try:
                redis_command(self, "enqueue")(
                    message.queue_name,
                    message.options["redis_message_id"],
                    encode_message(message),
                    suffix,
                )
            except (redis.ConnectionError, redis.TimeoutError) as error:
                raise BrokerUnavailable(
                    f"Redis did not answer while enqueueing job {message.actor_name} "
                    f"{message.message_id} ({_reason(error)}); it may not have been enqueued: "
                    "send it again once Redis is back"
                ) from error
            except redis.ResponseError as error:
                if is_out_of_memory(error):
                    raise BrokerFull(
                        f"Redis refused job {message.actor_name} {message.message_id} on queue "
                        f"{message.queue_name!r}: it is at its maxmemory limit, so nothing was "
                        "enqueued (jobs already queued are kept); free memory or raise maxmemory"
                    ) from None
                raise
        self.emit_after("enqueue", message, delay)
        return message

    def enqueue_many(
        self, messages: list[Message], *, delay: int | None = None, batch_size: int = 1000
    ) -> list[Message]:
        """Enqueue in batches: one script call per queue per batch, one round trip per batch.

        Each script call is atomic, so after an error the messages of a call are
        either all in their queue or none are (``brokers.bulk``). A duplicate of a
        pending unique job is not sent: its place holds the pending job's message.
        """
        # All through before_enqueue first: an invalid message fails the call before any is sent.
        answers: list[Message] = []
        to_send: list[tuple[int, Message]] = []
        try:
            for message in messages:
                prepared, pending = self._prepare(message, delay)
                if pending is None:
                    to_send.append((len(answers), prepared))
                answers.append(pending or prepared)
        except BaseException:
            enqueue_failed(self, [queued for _, queued in to_send], delay)
            raise
        sent: list[Message] = []
        for index, batch in enumerate(batches(to_send, batch_size)):
            by_queue: dict[str, list[tuple[int, Message]]] = {}
            for position, queued in batch:
                by_queue.setdefault(queued.queue_name, []).append((position, queued))
            pipe = self.client.pipeline(transaction=False)
            for queue_name, queued_messages in by_queue.items():
                triples = []
                for _, queued in queued_messages:
                    triples += [
                        queued.options["redis_message_id"],
                        encode_message(queued),
                        "" if delay is not None else level_suffix(queued.options.get("priority")),
                    ]
                pipeline_command(self, pipe, "enqueue_batch", queue_name, *triples)
            rest = [queued for _, queued in to_send[(index + 1) * batch_size :]]
            try:
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as error:
                staged = [m for group in by_queue.values() for _, m in group]
                enqueue_failed(self, staged + rest, delay)
                raise BulkSendError(str(error), staged + rest, sent) from error
            failed: list[Message] = []
            reason = ""
            for queued_messages, result in zip(by_queue.values(), results, strict=True):
                if isinstance(result, Exception):
                    failed += [queued for _, queued in queued_messages]
                    reason = str(result)
                    continue
                for _, queued in queued_messages:
                    self.emit_after("enqueue", queued, delay)
                    sent.append(queued)
            if failed:
                enqueue_failed(self, failed + rest, delay)
                raise BulkSendError(reason, failed + rest, sent)
        return answers

    def _prepare(self, message: Message, delay: int | None) -> tuple[Message, Message | None]:
        # As enqueue: a broker id, the delay queue and eta if delayed, then before_enqueue;
        # with the pending job's message when this one duplicates it.
        message = message.copy(options={"redis_message_id": str(uuid4())})
        if delay is not None:
            message = message.copy(
                queue_name=dq_name(message.queue_name), options={"eta": current_millis() + delay}
            )
        return message, before_enqueue(self, message, delay)

    def do_fetch(self, queue_name: str, count: int) -> list[tuple[bytes, bytes | None, int]]:
        """Up to ``count`` (redis id, payload, redeliveries) triples.

        The payload is ``None`` if the id has none; redeliveries counts the
        times a dead worker's hold on the message was given back. A fetch
        that fails is retried, on the next call for the queue, under the same
        token: if the script ran and only its reply was lost, the retry
        returns what it took (``lua/dispatch.lua``).
        """
        key = (os.getpid(), queue_name)
        with self._consumers_lock:
            token = self._unanswered_fetches.pop(key, None) or uuid4().hex
        fetch = script_command(self, "fetch")  # not do_fetch: that is this method
        try:
            if self.priority_config.mode == "weighted":
                flat = fetch(
                    queue_name, count, token, "weighted", random.getrandbits(31), *self._weights
                )
            else:
                flat = fetch(queue_name, count, token, "strict")
        except redis.RedisError:
            with self._consumers_lock:
                self._unanswered_fetches.setdefault(key, token)
            raise
        return [(flat[i], flat[i + 1], int(flat[i + 2] or 0)) for i in range(0, len(flat), 3)]

    def keep_orphans(self, queue_name: str, triples: list[tuple[bytes, bytes | None, int]]) -> None:
        """Fetched messages a closing consumer could not requeue: the next consumer runs them."""
        if triples:
            with self._consumers_lock:
                self._orphans.setdefault((os.getpid(), queue_name), []).extend(triples)

    def take_orphans(self, queue_name: str) -> list[tuple[bytes, bytes | None, int]]:
        with self._consumers_lock:
            return self._orphans.pop((os.getpid(), queue_name), [])

    def requeue_ids(self, queue_name: str, ids_and_levels: list[tuple[str | bytes, Any]]) -> None:
        """Put fetched ids back at the head of their level lists, in the given order."""
        if ids_and_levels:
            args = [
                part
                for message_id, level in ids_and_levels
                for part in (message_id, level_suffix(level))
            ]
            script_command(self, "requeue")(queue_name, *args)
