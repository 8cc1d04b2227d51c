"""The dead-letter store: failed jobs kept with why they failed, to list, show, replay, purge.

One store per broker, in a Redis: the broker's own (Redis and embedded), or on
RabbitMQ the Redis that holds jobkit's state (``JOBKIT_STATE_URL``). A RabbitMQ
queue cannot be searched, read by id or trimmed by age without consuming it;
a Redis hash plus sorted sets can, atomically.

Keys (``jobkit:dl:``): ``records`` (hash id -> record JSON), ``by_time`` (zset
id -> failed-at ms), ``queue_of`` (hash id -> queue) and ``queue:<name>`` (zset
per queue, for counts and the queue filter). A record is keyed by the message
id, so a message dead-lettered twice (a worker died between storing it and
acking it) is kept once. An id may be given by a unique prefix (:meth:`DeadLetterStore.
resolve`): a ``ZSCAN`` of ``by_time`` with ``MATCH prefix*``, members only on the wire.

Retention: records older than ``JOBKIT_DEAD_LETTER_TTL`` (default ``7d``;
``0`` keeps them forever) are removed as new ones arrive and by ``purge
--older-than``. Size: past ``JOBKIT_DEAD_LETTER_MAX`` records (default
100,000; ``0`` is unbounded) the oldest are dropped, with a WARNING.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from dramatiq import Broker, Message
from dramatiq.broker import MessageProxy

from jobkit.errors import JobkitError
from jobkit.settings import current
from middleware.dead_letters import dead_letter_of, describe_undecodable

from .id_prefixes import MIN_PREFIX, match_pattern, resolve_id
from .state import state_client

MAX_ENV = "JOBKIT_DEAD_LETTER_MAX"
PREFIX = "jobkit:dl:"
RECORDS, BY_TIME, QUEUE_OF, QUEUE = (
    f"{PREFIX}records",
    f"{PREFIX}by_time",
    f"{PREFIX}queue_of",
    f"{PREFIX}queue:",
)
logger = logging.getLogger("jobkit.dead_letters")
#: The command that lists dead letters, named by errors about ids.
LISTING = "jobkit dead-letters list"

# Removes ids from every index; ARGV: queue key prefix, ids...
_REMOVE = """
local removed = 0
for i = 2, #ARGV do
    local id = ARGV[i]
    local queue = redis.call("hget", KEYS[3], id)
    if queue then
        redis.call("zrem", ARGV[1] .. queue, id)
    end
    removed = removed + redis.call("hdel", KEYS[1], id)
    redis.call("zrem", KEYS[2], id)
    redis.call("hdel", KEYS[3], id)
end
return removed
"""

# Adds one record, then expires (TTL) and drops (size cap) at most 100 old ones.
# KEYS: records, by_time, queue_of; ARGV: prefix, id, record, score, queue, ttl_ms, max.
_ADD = """
local prefix, id, record, score, queue = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local ttl, max_entries = tonumber(ARGV[6]), tonumber(ARGV[7])
local function remove(ids)
    for _, old in ipairs(ids) do
        local old_queue = redis.call("hget", KEYS[3], old)
        if old_queue then
            redis.call("zrem", prefix .. old_queue, old)
        end
        redis.call("hdel", KEYS[1], old)
        redis.call("zrem", KEYS[2], old)
        redis.call("hdel", KEYS[3], old)
    end
end
local previous = redis.call("hget", KEYS[3], id)
if previous and previous ~= queue then
    redis.call("zrem", prefix .. previous, id)
end
redis.call("hset", KEYS[1], id, record)
redis.call("zadd", KEYS[2], score, id)
redis.call("hset", KEYS[3], id, queue)
redis.call("zadd", prefix .. queue, score, id)
local expired = {}
if ttl > 0 then
    expired = redis.call("zrangebyscore", KEYS[2], "-inf", "(" .. (score - ttl), "LIMIT", 0, 100)
    remove(expired)
end
local dropped = {}
if max_entries > 0 then
    local over = redis.call("zcard", KEYS[2]) - max_entries
    if over > 0 then
        dropped = redis.call("zrange", KEYS[2], 0, math.min(over, 100) - 1)
        remove(dropped)
    end
end
return {#expired, #dropped}
"""


class DeadLetterError(JobkitError):
    """A dead-letter operation cannot be done (unknown id, undecodable record, no store)."""


@dataclass(frozen=True)
class Filters:
    """Which dead letters an operation applies to; every field given must match."""

    queue: str | None = None
    actor: str | None = None
    reason: str | None = None
    #: Failed at or after this time (epoch ms).
    since_ms: int | None = None
    #: Failed before this time (epoch ms), e.g. ``purge --older-than``.
    before_ms: int | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        return (self.actor is None or record.get("actor") == self.actor) and (
            self.reason is None or record.get("reason") == self.reason
        )


@dataclass
class ReplayReport:
    """What a replay did: ids re-enqueued (old -> new message id), skipped, and failed."""

    replayed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "skipped": self.skipped, "failed": self.failed}


class DeadLetterStore:
    """Dead letters of one broker. The Python API behind ``jobkit dead-letters``."""

    def __init__(
        self,
        client: redis.Redis,
        broker: Broker | None = None,
        *,
        ttl_ms: int | None = None,
        max_entries: int | None = None,
    ) -> None:
        self.client = client
        self.broker = broker
        settings = current()
        self.ttl_ms = settings.dead_letter_ttl if ttl_ms is None else ttl_ms
        self.max_entries = settings.dead_letter_max if max_entries is None else max_entries
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)

    # -- writing -----------------------------------------------------------------

    def add(self, record: dict[str, Any]) -> None:
        """Keep ``record`` (it needs ``id``, ``queue`` and ``failed_at_ms``)."""
        expired, dropped = self._add(
            keys=[RECORDS, BY_TIME, QUEUE_OF],
            args=[
                QUEUE,
                record["id"],
                json.dumps(record, default=str),
                record["failed_at_ms"],
                record["queue"],
                self.ttl_ms,
                self.max_entries,
            ],
        )
        if dropped:
            logger.warning(
                "dead letters: the store is over %s=%d; dropped the %d oldest",
                MAX_ENV,
                self.max_entries,
                dropped,
            )

    def remove(self, ids: Iterable[str]) -> int:
        """Delete these dead letters; returns how many existed."""
        ids = list(ids)
        removed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            removed += int(self._remove(keys=[RECORDS, BY_TIME, QUEUE_OF], args=[QUEUE, *chunk]))
        return removed

    # -- reading -----------------------------------------------------------------

    def get(self, dead_letter_id: str) -> dict[str, Any] | None:
        data = self.client.hget(RECORDS, dead_letter_id)
        return json.loads(data) if data is not None else None

    def resolve(self, prefix: str) -> str:
        """The id of the one dead letter whose id is or starts with ``prefix`` (git-style).

        Raises :class:`~brokers.id_prefixes.UnknownId` or
        :class:`~brokers.id_prefixes.AmbiguousId`, one line each.
        """
        return self.resolve_all([prefix])[0]

    def resolve_all(self, prefixes: Iterable[str]) -> list[str]:
        """:meth:`resolve` for each prefix, in order, each id once; whole ids in one round trip."""
        prefixes = list(dict.fromkeys(prefixes))
        exists = self.client.hmget(QUEUE_OF, prefixes) if prefixes else []
        resolved = []
        for prefix, queue in zip(prefixes, exists, strict=True):
            candidates = [prefix] if queue is not None else self._ids_starting(prefix)
            resolved.append(resolve_id(prefix, candidates, what="dead letter", listing=LISTING))
        return list(dict.fromkeys(resolved))

    def _ids_starting(self, prefix: str) -> list[str]:
        if len(prefix) < MIN_PREFIX:
            return []  # resolve_id says it is too short; no scan of every id for it
        found = self.client.zscan_iter(BY_TIME, match=match_pattern(prefix), count=1000)
        return [member.decode() for member, _score in found]

    def count(self) -> int:
        return int(self.client.zcard(BY_TIME))

    def counts_by_queue(self) -> dict[str, int]:
        counts = {}
        for key in self.client.scan_iter(match=f"{QUEUE}*", count=1000):
            name = key.decode()[len(QUEUE) :]
            counts[name] = int(self.client.zcard(key))
        return {name: n for name, n in sorted(counts.items()) if n}

    def list(self, filters: Filters = Filters(), limit: int | None = None) -> list[dict[str, Any]]:
        """Dead letters matching ``filters``, newest first, at most ``limit``."""
        found = []
        for record in self.iter(filters):
            found.append(record)
            if limit is not None and len(found) >= limit:
                break
        return found

    def iter(self, filters: Filters = Filters(), batch: int = 200) -> Iterator[dict[str, Any]]:
        index = f"{QUEUE}{filters.queue}" if filters.queue else BY_TIME
        high = f"({filters.before_ms}" if filters.before_ms is not None else "+inf"
        low = filters.since_ms if filters.since_ms is not None else "-inf"
        offset = 0
        while True:
            # Without scores: a list of members.
            ids = cast(
                "list[bytes]",
                self.client.zrevrangebyscore(index, high, low, start=offset, num=batch),
            )
            if not ids:
                return
            offset += len(ids)
            for data in self.client.hmget(RECORDS, ids):
                if data is None:
                    continue  # removed meanwhile
                record = json.loads(data)
                if filters.matches(record):
                    yield record

    # -- operations --------------------------------------------------------------

    def purge(self, ids: Iterable[str] = (), filters: Filters | None = None) -> int:
        """Delete the given ids, or every dead letter matching ``filters``; returns the count."""
        targets = list(ids)
        if filters is not None:
            targets += [record["id"] for record in self.iter(filters)]
        return self.remove(targets)

    def replay(
        self,
        ids: Iterable[str] = (),
        filters: Filters | None = None,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReplayReport:
        """Re-enqueue dead letters as new messages; each is deleted once its enqueue returned.

        The new message has the original's actor, arguments and options, no
        retry count, and ``replayed_from`` = the dead letter's id. The broker's
        enqueue returns only when the broker has the message (RabbitMQ with
        publisher confirms), so a crash between enqueue and delete replays that
        one again later: a duplicate, never a loss.
        """
        if self.broker is None:
            raise DeadLetterError("this store has no broker to replay to")
        records: list[dict[str, Any]] = []
        report = ReplayReport()
        for dead_letter_id in ids:
            record = self.get(dead_letter_id)
            if record is None:
                report.failed[dead_letter_id] = "no such dead letter"
            else:
                records.append(record)
        if filters is not None:
            records += list(self.iter(filters))
        for done, record in enumerate(records, start=1):
            fields = record.get("message")
            if not fields:
                report.skipped[record["id"]] = (
                    f"{record.get('reason', 'undecodable')}: no message to replay (raw bytes kept)"
                )
            elif dry_run:
                report.replayed[record["id"]] = "(dry run)"
            else:
                try:
                    sent = self.broker.enqueue(replay_message(fields, record["id"]))
                except Exception as error:  # noqa: BLE001 - reported per id, the rest go on
                    report.failed[record["id"]] = f"{type(error).__name__}: {error}"
                else:
                    self.remove([record["id"]])
                    report.replayed[record["id"]] = sent.message_id
            if progress is not None:
                progress(done, len(records))
        return report


def replay_message(fields: dict[str, Any], dead_letter_id: str) -> Message:
    """A new message for a kept one (``message_as_sent``): fresh id and timestamp."""
    return Message(
        queue_name=fields["queue_name"],
        actor_name=fields["actor_name"],
        args=tuple(fields["args"]),
        kwargs=dict(fields["kwargs"]),
        options={**fields["options"], "replayed_from": dead_letter_id},
    )


_stores: weakref.WeakKeyDictionary[Broker, DeadLetterStore | str] = weakref.WeakKeyDictionary()


def use_dead_letter_store(broker: Broker, client: redis.Redis | None, no_store_reason: str) -> None:
    """Give ``broker`` its store (``build_broker`` calls this with the state Redis)."""
    _stores[broker] = DeadLetterStore(client, broker) if client is not None else no_store_reason


def dead_letter_store(broker: Broker) -> DeadLetterStore:
    """The store of ``broker``; raises :class:`DeadLetterError` when it has none."""
    store = _stores.get(broker)
    if store is None:  # a broker not made by build_broker
        use_dead_letter_store(broker, *state_client(broker))
        store = _stores[broker]
    if isinstance(store, str):
        raise DeadLetterError(f"no dead-letter store: {store}")
    return store


def has_store(broker: Broker) -> bool:
    try:
        dead_letter_store(broker)
    except DeadLetterError:
        return False
    return True


def keep_failed(broker: Broker, message: Message | MessageProxy) -> bool:
    """Store the dead letter of a message a worker rejects; ``False`` if it could not be stored.

    The caller (the broker's consumer) removes the message from its queue only
    after ``True``; on ``False`` it leaves the message to its broker's own
    dead-letter queue, so nothing is lost.
    """
    return _keep(broker, dead_letter_of(broker, message))


def keep_undecodable(broker: Broker, queue_name: str, raw: bytes, error: Exception) -> bool:
    """Store bytes found in a queue that are not a message (reason ``undecodable``)."""
    record = describe_undecodable(queue_name, raw, error)
    kept = _keep(broker, record)
    if kept:
        logger.error(
            "dead letters: queue %r held bytes that are not a message (%s); kept as dead letter %s",
            record["queue"],
            error,
            record["id"],
        )
    return kept


def _keep(broker: Broker, record: dict[str, Any]) -> bool:
    try:
        dead_letter_store(broker).add(record)
    except (DeadLetterError, redis.RedisError) as error:
        logger.error(
            "dead letters: cannot store %s of queue %r (%s); left to the broker's own "
            "dead-letter queue %s.XQ",
            record["id"],
            record["queue"],
            error,
            record["queue"],
        )
        return False
    broker.emit_after("dead_letter", record)
    return True
