"""Job records in the state Redis: written in batches, read by id, listed by index, cancelled.

One store per broker, in the Redis that holds jobkit's state (the broker's own
on Redis and embedded; ``JOBKIT_STATE_URL`` on RabbitMQ). The key layout is
documented at the top of ``lua/job_records.lua``, which applies every change
atomically. :class:`JobRecordStore` is both the sink ``JobRecords`` writes to
and the Python API behind ``jobkit jobs``; :func:`job_records` gives a broker's.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import dramatiq
import redis
from dramatiq import Broker

from jobkit.errors import JobkitError
from middleware.dead_letters import iso_ms
from middleware.job_records import JobRecords
from middleware.record_sink import (
    ACTOR,
    ARGS,
    DEAD_LETTER,
    ENQUEUED_AT,
    FINISHED,
    GROUP,
    PRIORITY,
    PROGRESS,
    QUEUE,
    REASON,
    REPLAYED_AS,
    REPLAYED_FROM,
    RESULT,
    RESULT_ERROR,
    STATES,
    SUCCEEDED,
    UNIQUE_KEY,
    ClaimReply,
    Event,
    PendingClaim,
)

from .id_prefixes import MIN_PREFIX, UnknownId, resolve_id
from .record_writer import RecordWriter

logger = logging.getLogger("jobkit.job_records")
_encode = json.JSONEncoder(separators=(",", ":")).encode

RECORD, INDEX = "jobkit:job:", "jobkit:jobs:"
#: Where a running job's cancel is announced to the workers; pub/sub spans a server's
#: databases, so the channel names the database (``:<db>``).
CANCEL_CHANNEL = "jobkit:jobs:cancel"
LISTING = "jobkit jobs list"
_SCRIPT = (Path(__file__).parent / "lua" / "job_records.lua").read_text()
_WAIT_FIRST_S, _WAIT_MAX_S = 0.02, 0.5
#: Buckets of ids by their first ``MIN_PREFIX`` characters (lua/job_records.lua).
PREFIXES = INDEX + "p:"


class JobRecordError(JobkitError):
    """A job-record operation cannot be done (no store, no such job)."""


class UnknownJob(JobRecordError):
    """No record has this id: never sent, or finished longer ago than ``JOBKIT_JOB_TTL``."""


class WaitTimeout(JobRecordError):
    """The job did not finish within the time given."""


class JobFailed(JobRecordError):
    """The job failed for good (dead-lettered), was cancelled or skipped; ``record`` says how."""

    def __init__(self, message: str, record: JobRecord) -> None:
        super().__init__(message)
        self.record = record


class ResultTooLarge(JobRecordError):
    """The job succeeded but its result was not kept (over the size limit, or not JSON)."""


@dataclass(frozen=True)
class Attempt:
    number: int
    started_at: str | None
    ended_at: str | None
    duration_ms: float | None
    host: str | None
    pid: int | None
    #: succeeded, failed, cancelled, interrupted (its worker died), or running.
    outcome: str
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class StateChange:
    state: str
    at: str | None
    #: For delayed, deferred and retrying: when it is due; else what happened, if said.
    due_at: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """Everything kept about one job (``jobkit jobs show``)."""

    id: str
    state: str
    actor: str | None
    queue: str | None
    priority: str | None
    args: Any
    enqueued_at: str | None
    state_at: str | None
    #: When a delayed, deferred or retrying job is due.
    due_at: str | None
    history: list[StateChange]
    attempts: list[Attempt]
    progress: dict[str, Any] | None = None
    has_result: bool = False
    result_error: str | None = None
    dead_letter: str | None = None
    reason: str | None = None
    replayed_from: str | None = None
    replayed_as: str | None = None
    group: str | None = None
    #: A unique job's key (``unique_key`` of its actor).
    unique_key: str | None = None
    cancel_requested_at: str | None = None
    #: The result as stored (JSON text); :meth:`result` decodes it.
    result_json: str | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def result(self) -> Any:
        """The job's return value, if it succeeded and its actor keeps results."""
        if self.result_error:
            raise ResultTooLarge(f"job {self.id}: {self.result_error}")
        return json.loads(self.result_json) if self.result_json is not None else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("result_json")
        data["result"] = json.loads(self.result_json) if self.result_json is not None else None
        return data


@dataclass(frozen=True)
class CancelOutcome:
    """What cancelling one job did."""

    id: str
    #: cancelled (it will never run), cancelling (running: interrupted now),
    #: finished (it had already ended: nothing changed), not_found.
    outcome: str
    #: The state it was in.
    state: str | None = None


class JobRecordStore:
    """Job records of one broker: the sink ``JobRecords`` writes to, and the Python API."""

    def __init__(self, client: redis.Redis, *, ttl_ms: int) -> None:
        self.client = client
        self.ttl_ms = ttl_ms
        self._script = client.register_script(_SCRIPT)
        self.writer = RecordWriter(self._apply)
        self._watcher: threading.Thread | None = None
        self._watching = threading.Event()

    # -- the sink ------------------------------------------------------------------

    def put(self, event: Event) -> None:
        self.writer.put(event)

    def claim(self, event: Event) -> PendingClaim:
        return self.writer.claim(event)

    def flush(self, timeout: float = 5.0) -> bool:
        return self.writer.flush(timeout)

    def _apply(self, events: Sequence[Event]) -> list[ClaimReply]:
        # One JSON array an event: packing a dozen arguments each cost the process more.
        args: list[Any] = ["apply", self.ttl_ms]
        args += [
            _encode(
                (e.kind, e.job_id, e.actor, e.queue, e.ordinal, e.state, e.ms, e.note, e.fields)
            )  # fmt: skip
            for e in events
        ]
        replies = self._script(args=args)
        return [r if isinstance(r, int) else r.decode() for r in replies]

    @property
    def channel(self) -> str:
        return f"{CANCEL_CHANNEL}:{self.client.connection_pool.connection_kwargs.get('db', 0)}"

    def watch_cancels(
        self, on_cancel: Callable[[str], None], running: Callable[[], list[str]]
    ) -> None:
        self._watching.set()  # first: a watcher still winding down carries on
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._watcher = threading.Thread(
            target=self._watch, args=(on_cancel, running), name="jobkit-job-cancels", daemon=True
        )
        self._watcher.start()

    def cancelled_among(self, job_ids: list[str]) -> list[str]:
        """Those of ``job_ids`` whose cancel was asked for."""
        if not job_ids:
            return []
        raws = cast("list[bytes | None]", self.client.mget([RECORD + i for i in job_ids]))
        return [i for i, raw in zip(job_ids, raws, strict=True) if raw and "cx" in json.loads(raw)]

    def stop_watching(self) -> None:
        """End the cancel watcher (a worker shutting down); it exits within a second."""
        self._watching.clear()

    def _watch(self, on_cancel: Callable[[str], None], running: Callable[[], list[str]]) -> None:
        failing = False
        while self._watching.is_set():
            try:
                pool = self.client.connection_pool
                with _CountingPubSub(pool, ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(self.channel)
                    # A cancel announced before this subscription (boot, reconnect) is
                    # in the record: look at the jobs running here once subscribed.
                    for job_id in self.cancelled_among(running()):
                        on_cancel(job_id)
                    seen = pubsub.connects
                    if failing:
                        logger.warning("job records: cancel announcements are received again")
                        failing = False
                    while self._watching.is_set():
                        item = pubsub.get_message(timeout=1.0)
                        if item is not None and item.get("type") == "message":
                            on_cancel(item["data"].decode())
                        if pubsub.connects != seen:  # subscribed again after a lost connection
                            seen = pubsub.connects
                            for job_id in self.cancelled_among(running()):
                                on_cancel(job_id)
            except redis.RedisError as error:
                if not failing:
                    logger.warning(
                        "job records: cannot receive cancel announcements (%s); retrying", error
                    )
                    failing = True
                time.sleep(1.0)

    # -- reading -------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id``, or None; this process's own events are written first."""
        self.flush()  # a job just sent from here is found, not "unknown"
        raw = cast("bytes | None", self.client.get(RECORD + job_id))
        return _record(job_id, raw) if raw is not None else None

    def show(self, job_id: str) -> JobRecord:
        """The record of ``job_id`` (or a unique prefix of it); :class:`UnknownJob` if none."""
        self.flush()
        record = self.get(job_id)
        if record is None:
            record = self.get(self.resolve(job_id))
        if record is None:
            raise UnknownJob(f"no job {job_id!r} (see {LISTING})")
        return record

    def resolve(self, prefix: str) -> str:
        """The id of the one job whose id is or starts with ``prefix`` (git-style).

        A prefix (at least ``MIN_PREFIX`` characters) is looked up in the bucket of ids
        sharing its first four (a hash of a few dozen fields at a million jobs); an id
        whose record has expired and whose entry is not trimmed yet does not count.
        """
        if self.client.exists(RECORD + prefix):
            return prefix
        found: list[str] = []
        if len(prefix) >= MIN_PREFIX:
            bucket, rest = prefix[:MIN_PREFIX], prefix[MIN_PREFIX:]
            rests = cast("list[bytes]", self.client.hkeys(f"{PREFIXES}{bucket}"))
            found = [bucket + r.decode() for r in rests if r.decode().startswith(rest)]
            if found:
                alive = self.client.pipeline(transaction=False)
                for job_id in found:
                    alive.exists(RECORD + job_id)
                found = [i for i, ok in zip(found, alive.execute(), strict=True) if ok]
        try:
            return resolve_id(prefix, found, what="job", listing=LISTING)
        except UnknownId as error:
            raise UnknownJob(str(error)) from None

    def find(
        self,
        *,
        states: Iterable[str] = (),
        actor: str | None = None,
        queue: str | None = None,
        since_ms: int | None = None,
        before_ms: int | None = None,
        limit: int = 50,
    ) -> list[JobRecord]:
        """Jobs matching every filter given, most recently changed first, at most ``limit``.

        ``since_ms`` and ``before_ms`` bound when each job entered its current
        state; pass the last listed job's ``state_at`` (as ms) as ``before_ms``
        for the next page.
        """
        self.flush()
        wanted = list(states) or list(STATES)
        if actor is not None:
            actors = [actor]
        elif queue is not None:
            actors = [name for name, its in self.actors().items() if its == queue]
        high = f"({before_ms}" if before_ms is not None else "+inf"
        # A finished job's record expires TTL after it finished, while its index entries
        # stay until a later job of the same index finishes (never, for an actor that no
        # longer runs): older entries name no record, so they are not read at all.
        expired = int(time.time() * 1000) - self.ttl_ms if self.ttl_ms > 0 else None
        keys: list[str] = []
        lows: list[int | str] = []
        for state in wanted:
            bound = since_ms
            if state in FINISHED and expired is not None:
                bound = expired if bound is None else max(bound, expired)
            low: int | str = "-inf" if bound is None else bound
            if actor is None and queue is None:
                keys.append(f"{INDEX}s:{state}")
                lows.append(low)
            else:
                keys += [f"{INDEX}a:{name}:{state}" for name in actors]
                lows += [low] * len(actors)
        found: list[JobRecord] = []
        offset, batch = 0, max(limit, 50)
        while keys and len(found) < limit:
            with self.client.pipeline(transaction=False) as pipe:
                for key, low in zip(keys, lows, strict=True):
                    pipe.zrevrangebyscore(key, high, low, start=offset, num=batch, withscores=True)
                pages = pipe.execute()
            merged = list(heapq.merge(*pages, key=lambda item: -item[1]))
            if not merged:
                break
            # Newest first: read only as many records as are still wanted (a listing of
            # every state, or of a queue's actors, would otherwise read a page per index).
            position = 0
            while position < len(merged) and len(found) < limit:
                chunk = merged[position : position + limit - len(found)]
                position += len(chunk)
                for record in self._records([member.decode() for member, _score in chunk]):
                    if queue is not None and record.queue != queue:
                        continue
                    found.append(record)
            if all(len(page) < batch for page in pages):
                break
            offset += batch
        # Each index was read from the same offset: re-sort what was gathered.
        found.sort(key=lambda record: record.state_at or "", reverse=True)
        return found[:limit]

    def actors(self) -> dict[str, str]:
        """Every actor with records, and its queue."""
        found = cast("dict[bytes, bytes]", self.client.hgetall(f"{INDEX}actors"))
        return {name.decode(): queue.decode() for name, queue in found.items()}

    def _records(self, ids: list[str]) -> list[JobRecord]:
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.get(RECORD + job_id)
            raws = pipe.execute()
        return [_record(job_id, raw) for job_id, raw in zip(ids, raws, strict=True) if raw]

    def group(self, group_id: str) -> list[JobRecord]:
        """The jobs of a group or pipeline, in the order they were sent."""
        self.flush()
        members = cast("list[bytes]", self.client.zrange(f"{INDEX}g:{group_id}", 0, -1))
        ids = [member.decode() for member in members]
        return self._records(ids)

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait until the job finishes; its result if it succeeded.

        Raises :class:`JobFailed` (failed, cancelled or skipped; ``.record`` has
        the attempts and errors), :class:`WaitTimeout`, :class:`UnknownJob`,
        :class:`ResultTooLarge`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        record = self.show(job_id)
        pause = _WAIT_FIRST_S
        while not record.finished:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {record.id} is still {record.state} after {timeout:g} s")
            sleep = pause if deadline is None else min(pause, max(deadline - time.monotonic(), 0))
            time.sleep(sleep)
            pause = min(pause * 2, _WAIT_MAX_S)
            found = self.get(record.id)
            if found is None:
                raise UnknownJob(f"job {record.id}'s record expired while waiting")
            record = found
        if record.state != SUCCEEDED:
            raise JobFailed(_failure_line(record), record)
        return record.result()

    # -- cancelling ----------------------------------------------------------------

    def cancel(self, job_ids: Iterable[str]) -> list[CancelOutcome]:
        """Cancel each job: a queued, delayed, deferred or retrying one never runs, a
        running one is interrupted (or told, if cooperative); a finished one is left as is."""
        self.flush()
        outcomes = []
        for job_id in job_ids:
            try:
                resolved = self.resolve(job_id)
            except UnknownJob:
                outcomes.append(CancelOutcome(job_id, "not_found"))
                continue
            reply = self._script(
                args=["cancel", resolved, int(time.time() * 1000), self.channel, self.ttl_ms]
            )
            words = [part.decode() for part in reply]
            outcomes.append(CancelOutcome(resolved, words[0], words[1] if len(words) > 1 else None))
        return outcomes


def _failure_line(record: JobRecord) -> str:
    if record.state == "failed":
        last = record.attempts[-1] if record.attempts else None
        error = f": {last.error_type}: {last.error}" if last and last.error_type else ""
        where = f"; dead letter {record.dead_letter}" if record.dead_letter else ""
        return f"job {record.id} failed ({record.reason or 'failed'}){error}{where}"
    return f"job {record.id} was {record.state}"


class _CountingPubSub(redis.client.PubSub):
    """A subscription that counts its reconnections.

    redis-py reconnects a subscription by itself and subscribes again, without an
    error: what was announced meanwhile is lost, and only the records tell.
    """

    connects = 0

    def on_connect(self, connection: Any) -> None:
        super().on_connect(connection)
        self.connects += 1


def _record(job_id: str, raw: bytes) -> JobRecord:
    doc = json.loads(raw)
    state = doc.get("st", "")
    # Stable sort by ordinal: events of one job may have been written out of order.
    entries = sorted(doc.get("h", []), key=lambda entry: entry[0])
    history = []
    for entry in entries:
        entered, ms = entry[1], entry[2]
        note = entry[3] if len(entry) > 3 else ""
        due = int(note) if isinstance(note, str) and note.isdigit() else None
        history.append(StateChange(entered, iso_ms(ms), iso_ms(due), None if due else note or None))
    runs = int(doc.get("ru", 0))
    attempts = []
    for key in sorted(doc.get("at", {}), key=int):
        attempt = doc["at"][key]
        number = int(key)
        outcome = attempt.get("o")
        if outcome is None:  # no end: running, or its worker died (a later run exists)
            outcome = "running" if number >= runs and state == "running" else "interrupted"
        host, _, pid = str(attempt.get("w", "")).rpartition(":")
        attempts.append(
            Attempt(
                number=number,
                started_at=iso_ms(attempt.get("s")),
                ended_at=iso_ms(attempt.get("e")),
                duration_ms=attempt.get("d"),
                host=host or None,
                pid=int(pid) if pid.isdigit() else None,
                outcome=outcome,
                error_type=attempt.get("et"),
                error=attempt.get("em"),
                traceback=attempt.get("tb"),
            )
        )
    last = history[-1] if history else None
    return JobRecord(
        id=job_id,
        state=state,
        actor=doc.get(ACTOR),
        queue=doc.get(QUEUE),
        # Its send leaves "normal" out (every record would repeat it).
        priority=doc.get(PRIORITY) or ("normal" if ENQUEUED_AT in doc else None),
        args=json.loads(doc[ARGS]) if ARGS in doc else None,
        enqueued_at=iso_ms(int(doc[ENQUEUED_AT])) if ENQUEUED_AT in doc else None,
        state_at=iso_ms(doc.get("sa")),
        due_at=last.due_at if last is not None and last.state == state else None,
        history=history,
        attempts=attempts,
        progress=json.loads(doc[PROGRESS]) if PROGRESS in doc else None,
        has_result=RESULT in doc,
        result_error=doc.get(RESULT_ERROR),
        dead_letter=doc.get(DEAD_LETTER),
        reason=doc.get(REASON),
        replayed_from=doc.get(REPLAYED_FROM),
        replayed_as=doc.get(REPLAYED_AS),
        group=doc.get(GROUP),
        unique_key=doc.get(UNIQUE_KEY),
        cancel_requested_at=iso_ms(doc.get("cx")),
        result_json=doc.get(RESULT),
    )


_stores: weakref.WeakKeyDictionary[redis.Redis, JobRecordStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def record_store_for(client: redis.Redis, *, ttl_ms: int) -> JobRecordStore:
    """The one store (and writer) per state Redis client in this process."""
    with _stores_lock:
        store = _stores.get(client)
        if store is None:
            store = _stores[client] = JobRecordStore(client, ttl_ms=ttl_ms)
        return store


def job_records(broker: Broker | None = None) -> JobRecordStore:
    """The job records of ``broker`` (default: Dramatiq's global broker).

    Raises :class:`JobRecordError` when records are off or there is no state Redis.
    """
    if broker is None:
        broker = dramatiq.get_broker()
    middleware = next((m for m in broker.middleware if isinstance(m, JobRecords)), None)
    if middleware is None:
        raise JobRecordError("this broker keeps no job records (JobRecords is not installed)")
    if middleware.sink is None:
        raise JobRecordError(f"no job records: {middleware.no_store_reason}")
    return cast("JobRecordStore", middleware.sink)
