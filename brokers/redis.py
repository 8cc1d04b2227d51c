"""Redis (and embedded Valkey) broker with priority levels; health check and queue depths.

:class:`PriorityRedisBroker` is Dramatiq's ``RedisBroker`` with jobkit's copy of
its Lua dispatch script (``lua/dispatch.lua``), which keeps one id list per
priority level for each queue and fetches from them strictly (most urgent
non-empty level first) or weighted. Acks, nacks, the dead-letter queue, delay
queues and dead-worker recovery keep Dramatiq's key layout and behaviour.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

import redis
from dramatiq import Broker, Message, Middleware, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed

from jobkit.errors import BrokerFull, BrokerUnavailable
from jobkit.settings import current, mask_url
from middleware.dramatiq_seam import (
    RedisBrokerBase,
    RedisConsumerBase,
    pipeline_command,
    redis_command,
    script_command,
    use_dispatch_script,
)
from middleware.priorities import LEVELS, PriorityConfig

from .acks import AckBatcher
from .bulk import BulkSendError, batches
from .dead_letter_store import keep_failed, keep_undecodable
from .decoding import MessageRules, UndecodableMessage, decode_message
from .encoding import encode_message
from .hook_cache import CachedHooks
from .queue_depth import QueueDepth
from .redis_clients import redis_client

logger = logging.getLogger("jobkit.brokers.redis")

#: How often each worker process looks for dead workers (less when the timeout is short).
SWEEP_INTERVAL_S = 5.0
#: How long closing a consumer (or the broker) waits for its pending acks to go out.
ACK_FLUSH_TIMEOUT_S = 2.0

NAMESPACE = "dramatiq"
DISPATCH_SCRIPT = (Path(__file__).parent / "lua" / "dispatch.lua").read_bytes()
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
        message = self._prepare(message, delay)
        suffix = "" if delay is not None else level_suffix(message.options.get("priority"))
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
        either all in their queue or none are (``brokers.bulk``).
        """
        # All through before_enqueue first: an invalid message fails the call before any is sent.
        prepared = [self._prepare(message, delay) for message in messages]
        sent: list[Message] = []
        for index, batch in enumerate(batches(prepared, batch_size)):
            by_queue: dict[str, list[Message]] = {}
            for queued in batch:
                by_queue.setdefault(queued.queue_name, []).append(queued)
            pipe = self.client.pipeline(transaction=False)
            for queue_name, queued_messages in by_queue.items():
                triples = []
                for queued in queued_messages:
                    triples += [
                        queued.options["redis_message_id"],
                        encode_message(queued),
                        "" if delay is not None else level_suffix(queued.options.get("priority")),
                    ]
                pipeline_command(self, pipe, "enqueue_batch", queue_name, *triples)
            rest = prepared[(index + 1) * batch_size :]
            try:
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as error:
                staged = [m for group in by_queue.values() for m in group]
                raise BulkSendError(str(error), staged + rest, sent) from error
            failed: list[Message] = []
            reason = ""
            for queued_messages, result in zip(by_queue.values(), results, strict=True):
                if isinstance(result, Exception):
                    failed += queued_messages
                    reason = str(result)
                    continue
                for queued in queued_messages:
                    self.emit_after("enqueue", queued, delay)
                    sent.append(queued)
            if failed:
                raise BulkSendError(reason, failed + rest, sent)
        return sent

    def _prepare(self, message: Message, delay: int | None) -> Message:
        # As enqueue: a broker id, the delay queue and eta if delayed, then before_enqueue.
        message = message.copy(options={"redis_message_id": str(uuid4())})
        if delay is not None:
            message = message.copy(
                queue_name=dq_name(message.queue_name), options={"eta": current_millis() + delay}
            )
        self.emit_before("enqueue", message, delay)
        return message

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

    def __init__(self, broker: PriorityRedisBroker, queue_name: str, prefetch: int, timeout: int):
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
                return RedisMessage(message, redelivered=redeliveries > 0)
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


def build_redis_broker(
    url: str,
    middleware: list[Middleware],
    priority_config: PriorityConfig,
    *,
    heartbeat_timeout_ms: int | None = None,
) -> PriorityRedisBroker:
    """A priority-aware RedisBroker for ``url`` (redis://, rediss:// or unix://); lazy connect.

    A worker silent for ``heartbeat_timeout_ms`` (``JOBKIT_HEARTBEAT_TIMEOUT_MS``) is
    presumed dead and its jobs go to others.
    """
    timeout_ms = heartbeat_timeout_ms or current().heartbeat_timeout_ms
    return PriorityRedisBroker(
        client=redis_client(url),
        namespace=NAMESPACE,
        middleware=[
            *middleware,
            DeadWorkerSweep(interval_s=min(SWEEP_INTERVAL_S, timeout_ms / 2000)),
            RedisSettingsCheck(),
        ],
        priority_config=priority_config,
        heartbeat_timeout=timeout_ms,
    )


def is_out_of_memory(error: redis.ResponseError) -> bool:
    """Redis refused a write at ``maxmemory`` (with ``noeviction``)."""
    return isinstance(error, redis.exceptions.OutOfMemoryError) or str(error).startswith("OOM")


def unsafe_settings(client: redis.Redis) -> list[str]:
    """What in a Redis server's configuration can lose accepted jobs, one line each."""
    try:
        config = client.config_get("maxmemory-policy") | client.config_get("appendonly")
        config |= client.config_get("save")
    except redis.ResponseError:
        return []  # CONFIG is disabled (managed Redis): nothing to read
    problems = []
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        problems.append(
            f"maxmemory-policy is {policy}: at its memory limit Redis deletes keys, queued "
            "jobs included; set it to noeviction (enqueues then fail with a clear error)"
        )
    if config.get("appendonly") != "yes" and not config.get("save"):
        problems.append(
            "no persistence (appendonly no, no save points): a Redis restart loses every "
            "queued job; set appendonly yes (appendfsync everysec loses at most ~1 s)"
        )
    return problems


class DeadWorkerSweep(Middleware):
    """Gives a dead worker's jobs back every few seconds, instead of by chance.

    Dramatiq returns the unacked jobs of a worker whose heartbeat stopped only
    in "maintenance", which runs on a random 0.1% of broker calls: with an idle
    fleet that can take many minutes. Each worker process runs maintenance on
    every queue it knows every ``interval_s`` instead, so a SIGKILLed worker's
    jobs run again within the heartbeat timeout plus that interval.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, args=(broker,), name="jobkit-dead-worker-sweep", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self._stopping.set()

    def _run(self, broker: PriorityRedisBroker) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                sweep(broker)
            except redis.RedisError as error:
                logger.warning(
                    "dead-worker sweep failed (next in %.0f s): %s", self.interval_s, error
                )


def sweep(broker: PriorityRedisBroker) -> None:
    """Requeue the unacked jobs of every dead worker, on every queue this broker knows."""
    for queue_name in sorted(broker.get_declared_queues() | broker.get_declared_delay_queues()):
        redis_command(broker, "sweep")(queue_name)


class RedisSettingsCheck(Middleware):
    """Warns once per worker process, at boot, about Redis settings that can lose jobs."""

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        try:
            # Only in a Redis broker's stack (redis_broker), which has a client.
            problems = unsafe_settings(broker.client)  # type: ignore[attr-defined]
        except redis.RedisError:
            return  # the consumers report an unreachable server
        for problem in problems:
            logger.warning("unsafe Redis setting: %s", problem)


def check_redis(broker: RedisBroker, display_url: str) -> None:
    try:
        broker.client.ping()
    except redis.AuthenticationError:
        raise BrokerUnavailable(
            f"Redis at {mask_url(display_url)} refused the credentials; "
            "check the user and password in JOBKIT_BROKER_URL"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise BrokerUnavailable(
            f"cannot reach Redis at {mask_url(display_url)}: {_reason(error)}; "
            "is the server running and JOBKIT_BROKER_URL right?"
        ) from None
    except redis.ResponseError as error:
        raise BrokerUnavailable(f"Redis at {mask_url(display_url)} answered: {error}") from None


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")


def redis_queue_depths(broker: RedisBroker, declared: Iterable[str]) -> list[QueueDepth]:
    """Depths of every queue that is declared or has keys in the broker's namespace."""
    client = broker.client
    prefix = f"{broker.namespace}:"
    names = set(declared)
    for key in client.scan_iter(match=f"{prefix}*.msgs", count=1000):
        name = key.decode()[len(prefix) : -len(".msgs")]
        for suffix in (".DQ", ".XQ"):
            name = name.removesuffix(suffix)
        names.add(name)
    in_flight: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}__acks__.*", count=1000):
        queue = key.decode()[len(prefix) :].split(".", 2)[-1]
        if queue.endswith(".DQ"):
            continue
        in_flight[queue] = in_flight.get(queue, 0) + int(client.scard(key))
    depths = []
    for name in sorted(n for n in names if n and not n.startswith("__")):
        pipe = client.pipeline(transaction=False)
        for level in LEVELS:
            pipe.llen(f"{prefix}{name}{LEVEL_SUFFIXES[level]}")
        pipe.llen(f"{prefix}{name}.DQ")
        pipe.zcard(f"{prefix}{name}.XQ")
        *per_level, delayed, dead = (int(n) for n in pipe.execute())
        levels = dict(zip(LEVELS, per_level, strict=True))
        depths.append(
            QueueDepth(
                queue=name,
                ready=sum(per_level),
                delayed=delayed,
                dead_lettered=dead,
                in_flight=in_flight.get(name, 0),
                levels=levels,
            )
        )
    return depths
