"""The job records' writer: events alone gather into one batch; a claim or a flush goes at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import pytest
from dramatiq import Broker

from brokers import record_writer
from brokers.job_record_store import JobRecordStore, job_records
from middleware.record_sink import CLAIM, CREATED, EVENT, QUEUED, START, UNKNOWN, Event, ordinal


def queued(job_id: str) -> Event:
    now = int(time.time() * 1000)
    return Event(EVENT, job_id, "bench_noop", "default", ordinal(1, 0, CREATED), QUEUED, now)


def counting_batches(store: JobRecordStore) -> list[int]:
    """The size of every batch ``store``'s writer applies from now on."""
    sizes: list[int] = []
    apply = store.writer._apply

    def counted(events: Sequence[Event]) -> list:
        sizes.append(len(events))
        return apply(events)

    store.writer._apply = counted
    return sizes


def test_events_sent_in_a_loop_are_written_in_one_batch_when_flushed(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A linger far longer than the test: only the flush can end it.
    monkeypatch.setattr(record_writer, "LINGER_S", 30.0)
    store = job_records(redis_broker)
    sizes = counting_batches(store)
    ids = [str(uuid.uuid4()) for _ in range(50)]
    for job_id in ids:
        store.put(queued(job_id))
    assert store.flush(10.0)
    assert sizes == [50]
    assert all((record := store.get(job_id)) and record.state == QUEUED for job_id in ids)


def test_a_claim_goes_with_the_events_waiting_and_is_answered_at_once(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_writer, "LINGER_S", 30.0)
    store = job_records(redis_broker)
    sizes = counting_batches(store)
    for _ in range(3):
        store.put(queued(str(uuid.uuid4())))
    job_id = str(uuid.uuid4())
    store.put(queued(job_id))
    now = int(time.time() * 1000)
    claim = Event(CLAIM, job_id, "bench_noop", "default", ordinal(1, 0, START), "", now)
    # Answered by the store within a second, not after LINGER_S: the record has no
    # identity fields (the test's "queued" set none), so the start is to give them.
    assert store.claim(claim).wait(1.0) == UNKNOWN
    assert sizes == [5]
    record = store.get(job_id)
    assert record is not None and record.state == QUEUED  # a claim changes no state


def test_a_job_sent_from_this_process_is_found_at_once(
    redis_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_writer, "LINGER_S", 30.0)
    store = job_records(redis_broker)
    job_id = str(uuid.uuid4())
    store.put(queued(job_id))
    record = store.get(job_id)  # its event is written first, not left to linger
    assert record is not None and record.state == QUEUED
