"""Job records at scale: N finished records in the state Redis, then list, show, resolve, memory.

The suite's ``records_scale`` scenario (``--records N``, default 1,000,000). The
records are written by the product's own store (``JobRecordStore._apply``, the Lua
script ``brokers/lua/job_records.lua``), in batches as its writer sends them, from
the events ``JobRecords`` makes for a job: ``queued`` from the sender, the claim,
the start (``running``, with the attempt) and the end from the worker. So keys,
fields and indexes are what the product writes. The jobs are spread over 10
actors on 3 queues; 1 in 20 failed (dead-lettered, with an error and a
traceback), the others succeeded, without results; they finished over the last
20 hours (within the default 24 h TTL), the newest last.

Then, on the full store: ``find()`` with no filter, by state, by actor, by actor
and state, by queue (20 and 100 jobs), ``show()`` of a random id, ``resolve()``
of an 8-character prefix of a recent job (as listings show) and of a random one
(mostly older); each timed several times.
Memory: ``INFO used_memory`` before and after, divided by N (on a shared server
other clients' keys move it too), and ``MEMORY USAGE`` of records and of the
indexes. The records are deleted afterwards.
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis

from benchmarks.harness import clear_records
from brokers.job_record_store import INDEX, RECORD, JobRecordStore
from middleware.job_records import HOST, SEPARATORS
from middleware.record_sink import (
    ACTOR,
    ARGS,
    CLAIM,
    CREATED,
    DEAD_LETTER,
    END,
    ENQUEUED_AT,
    EVENT,
    FAILED,
    LAST_ATTEMPT,
    NEW_ATTEMPT,
    QUEUE,
    QUEUED,
    REASON,
    RUNNING,
    START,
    SUCCEEDED,
    Event,
    once,
    ordinal,
)

ACTORS = (
    "send_welcome_email", "send_invoice", "resize_image", "transcode_video", "sync_crm",
    "charge_card", "refresh_feed", "index_document", "export_report", "notify_slack",
)  # fmt: skip
QUEUES = ("default", "emails", "media")
#: One job in this many failed for good; the others succeeded.
FAILED_EVERY = 20
#: The records' jobs finished over this span, ending now (within the 24 h default TTL).
SPAN_MS = 20 * 3_600_000
TTL_MS = 24 * 3_600_000
#: Jobs per script call (3 events each): about the writer's batch of 500 events.
JOBS_PER_BATCH = 200
WRITERS = 2
#: A worker's pid, as attempts record it ("host:pid").
PID = 4242
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/.venv/lib/python3.11/site-packages/dramatiq/worker.py", line 513, '
    "in process_message\n    res = actor(*message.args, **message.kwargs)\n"
    '  File "/srv/app/.venv/lib/python3.11/site-packages/dramatiq/actor.py", line 182, '
    "in __call__\n    return self.fn(*args, **kwargs)\n"
    '  File "/srv/app/jobs/billing.py", line 88, in charge_card\n'
    "    response = gateway.charge(customer_id, amount_cents)\n"
    '  File "/srv/app/billing/gateway.py", line 41, in charge\n'
    '    raise ValueError(f"card declined for customer {customer_id}")\n'
    "ValueError: card declined for customer 48213\n"
)
#: Each query is timed this many times (the median and the slowest are reported).
QUERY_RUNS = 15
RESOLVE_RUNS = 3


def job_events(
    job_id: str, actor: str, queue: str, failed: bool, finished_ms: int, index: int
) -> list[Event]:
    """The events ``JobRecords`` makes for a job run once: queued, claim, start, end."""
    started_ms = finished_ms - 40 - index % 200
    enqueued_ms = started_ms - 3 - index % 50
    identity = {
        once(ACTOR): actor,
        once(QUEUE): queue,
        once(ENQUEUED_AT): str(enqueued_ms),
        once(ARGS): json.dumps({"customer_id": 10_000 + index % 90_000, "kind": "monthly"}),
    }
    where = f"{HOST}:{PID}"
    start = {"s": started_ms, "w": where}
    attempt: dict[str, Any] = {
        "s": started_ms,
        "e": finished_ms,
        "d": round((finished_ms - started_ms) + (index % 1000) / 1000, 2),
        "w": where,
        "o": FAILED if failed else SUCCEEDED,
    }
    end_fields: dict[str, str] = {}
    note = ""
    if failed:
        attempt["et"] = "ValueError"
        attempt["em"] = "card declined for customer 48213"
        attempt["tb"] = TRACEBACK
        note = "retries_exhausted"
        end_fields = {DEAD_LETTER: str(uuid.uuid4()), REASON: note}
    base = ordinal(1, 0, 0)
    return [
        Event(EVENT, job_id, actor, queue, ordinal(1, 0, CREATED), QUEUED, enqueued_ms, "",
              identity),
        Event(CLAIM, job_id, actor, queue, base + START, "", started_ms - 1),
        Event(EVENT, job_id, actor, queue, base + START, RUNNING, started_ms, "",
              {NEW_ATTEMPT: json.dumps(start, separators=SEPARATORS)}),
        Event(EVENT, job_id, actor, queue, base + END, FAILED if failed else SUCCEEDED,
              finished_ms, note,
              {LAST_ATTEMPT: json.dumps(attempt, separators=SEPARATORS), **end_fields}),
    ]  # fmt: skip


def _batches(count: int, now_ms: int, ids: list[str], failed: set[str]) -> Iterator[list[Event]]:
    """Events of ``count`` jobs, oldest first, ``JOBS_PER_BATCH`` jobs a batch."""
    step = SPAN_MS / max(count, 1)
    pick = random.Random(1)
    batch: list[Event] = []
    for index in range(count):
        job_id = str(uuid.uuid4())
        ids.append(job_id)
        fails = pick.randrange(FAILED_EVERY) == 0
        if fails:
            failed.add(job_id)
        actor, queue = pick.choice(ACTORS), pick.choice(QUEUES)
        finished_ms = int(now_ms - SPAN_MS + index * step)
        batch += job_events(job_id, actor, queue, fails, finished_ms, index)
        if len(batch) >= 3 * JOBS_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def write_records(store: JobRecordStore, count: int) -> tuple[list[str], set[str], float]:
    """Write ``count`` finished records with ``store``'s own script.

    Returns their ids, the failed ones' and the seconds it took.
    """
    ids: list[str] = []
    failed: set[str] = set()
    batches = _batches(count, int(time.time() * 1000), ids, failed)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer() -> None:
        while True:
            with lock:  # the generator is not thread-safe; the script call runs unlocked
                batch = next(batches, None)
            if batch is None or errors:
                return
            try:
                store._apply(batch)
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller
                errors.append(error)
                return

    started = time.perf_counter()
    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return ids, failed, time.perf_counter() - started


def timed(call: Callable[[], Any], runs: int) -> dict[str, Any]:
    """Milliseconds of each of ``runs`` calls (after one untimed call), median and max."""
    call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return {"samples_ms": samples, "median_ms": statistics.median(samples), "max_ms": max(samples)}


def used_memory(client: redis.Redis) -> int:
    """``used_memory`` once the server has freed what ``UNLINK`` left to its background thread."""
    deadline = time.monotonic() + 30
    while True:
        info = client.info("memory")
        if not info.get("lazyfree_pending_objects") or time.monotonic() > deadline:
            return int(info["used_memory"])
        time.sleep(0.1)


def memory_usage(client: redis.Redis, key: str, samples: int | None = None) -> int:
    """``MEMORY USAGE`` of ``key``: exact with ``samples=0`` (every member)."""
    return int(client.memory_usage(key, samples=samples) or 0)


def measure(client: redis.Redis, count: int, step: Callable[[str], None]) -> dict[str, Any]:
    """Write ``count`` records, time the reads, measure the memory, delete the records."""
    store = JobRecordStore(client, ttl_ms=TTL_MS)
    clear_records(client)
    before = used_memory(client)
    step(f"records at scale: writing {count:,} records")
    try:
        ids, failed, write_s = write_records(store, count)
        after = used_memory(client)
        result: dict[str, Any] = {
            "records": count,
            "write_s": round(write_s, 1),
            "events_per_s": round(3 * count / write_s),
            "memory": _memory(client, ids, failed, before, after, count),
        }
        step("records at scale: list, show, resolve")
        # This process holds a million ids, which a reader does not: keep the garbage
        # collector from walking them in the middle of a timed query.
        gc.collect()
        gc.freeze()
        try:
            result["queries"] = _queries(store, ids)
        finally:
            gc.unfreeze()
        return result
    finally:
        clear_records(client)


def _memory(
    client: redis.Redis, ids: list[str], failed_ids: set[str], before: int, after: int, count: int
) -> dict[str, Any]:
    failed = sorted(failed_ids)
    succeeded = [job_id for job_id in ids if job_id not in failed_ids]
    pick = random.Random(20)
    # Exact for a record; sampled for the indexes.
    sample_ok = [
        memory_usage(client, RECORD + i, 0)
        for i in pick.sample(succeeded, min(200, len(succeeded)))
    ] or [0]
    sample_failed = [
        memory_usage(client, RECORD + i, 0) for i in pick.sample(failed, min(50, len(failed)))
    ] or [0]
    indexes = {
        key.decode(): memory_usage(client, key.decode())
        for key in client.scan_iter(match=f"{INDEX}*", count=1000)
    }
    encoding = client.object("encoding", RECORD + ids[0])
    share_failed = len(failed) / count
    record_mean = (1 - share_failed) * statistics.mean(sample_ok) + share_failed * statistics.mean(
        sample_failed
    )
    return {
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_record": round((after - before) / count),
        "memory_usage_succeeded_record": round(statistics.median(sample_ok)),
        "memory_usage_failed_record": round(statistics.median(sample_failed)),
        "record_encoding": encoding.decode() if isinstance(encoding, bytes) else str(encoding),
        "index_keys": len(indexes),
        "index_bytes_per_record": round(sum(indexes.values()) / count),
        "memory_usage_per_record": round(record_mean + sum(indexes.values()) / count),
    }


def _queries(store: JobRecordStore, ids: list[str]) -> dict[str, Any]:
    pick = random.Random(7)
    actor = ACTORS[3]
    queries: dict[str, Callable[[], Any]] = {}
    for limit in (20, 100):
        queries[f"list, no filter, {limit}"] = lambda limit=limit: store.find(limit=limit)
        queries[f"list --state failed, {limit}"] = lambda limit=limit: store.find(
            states=[FAILED], limit=limit
        )
        queries[f"list --actor, {limit}"] = lambda limit=limit: store.find(actor=actor, limit=limit)
        queries[f"list --actor --state failed, {limit}"] = lambda limit=limit: store.find(
            states=[FAILED], actor=actor, limit=limit
        )
        queries[f"list --queue, {limit}"] = lambda limit=limit: store.find(
            queue=QUEUES[1], limit=limit
        )
    result = {name: timed(call, QUERY_RUNS) for name, call in queries.items()}
    for name, call in queries.items():  # what each returned, to show the queries are real
        result[name]["found"] = len(call())
    result["show (random id)"] = timed(lambda: store.show(pick.choice(ids)), QUERY_RUNS)
    # A short id from a listing names a recent job; any other job's prefix is found the
    # same way (one bucket of ids sharing the first 4 characters).
    recent = iter([pick.choice(ids[-1000:])[:8] for _ in range(QUERY_RUNS + 1)])
    result["resolve (8-char prefix, recent job)"] = timed(
        lambda: store.resolve(next(recent)), QUERY_RUNS
    )
    anyone = iter([pick.choice(ids)[:8] for _ in range(RESOLVE_RUNS + 1)])
    result["resolve (8-char prefix, random job)"] = timed(
        lambda: store.resolve(next(anyone)), RESOLVE_RUNS
    )
    return result
