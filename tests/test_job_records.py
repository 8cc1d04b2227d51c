"""Job records: every state a job passes through, in order, on every real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq import Broker

from brokers.dead_letter_store import dead_letter_store
from brokers.id_prefixes import AmbiguousId
from brokers.job_record_store import (
    JobFailed,
    JobRecord,
    JobRecordStore,
    UnknownJob,
    WaitTimeout,
    job_records,
)
from middleware.job_records import cancel_requested, report_progress
from middleware.record_sink import UNKNOWN, Event, ordinal
from tests.support.processes import wait_until, worker

QUEUE = "jobkit-test"


def states(record: JobRecord) -> list[str]:
    return [change.state for change in record.history]


@pytest.fixture
def records(real_broker: Broker) -> Iterator[JobRecordStore]:
    yield job_records(real_broker)


def finished(store: JobRecordStore, job_id: str, timeout: float = 20) -> JobRecord:
    assert wait_until(lambda: (r := store.get(job_id)) is not None and r.finished, timeout), (
        store.get(job_id)
    )
    record = store.get(job_id)
    assert record is not None
    return record


def test_a_job_that_succeeds_is_queued_running_succeeded_with_its_result(
    real_broker: Broker, records: JobRecordStore
) -> None:
    @dramatiq.actor(queue_name=QUEUE, store_results=True)
    def add(x: int, y: int, api_token: str = "") -> int:
        report_progress(0.5, "half way")
        return x + y

    message = add.send(1, 2, api_token="s3cret")
    records.flush()
    queued = records.show(message.message_id)
    assert queued.state == "queued" and queued.attempts == []
    assert queued.args == {"x": 1, "y": 2, "api_token": "[redacted]"}
    with worker(real_broker):
        assert records.wait(message.message_id, timeout=20) == 3
    record = records.show(message.message_id)
    assert states(record) == ["queued", "running", "succeeded"]
    assert (record.actor, record.queue, record.priority) == ("add", QUEUE, "normal")
    [attempt] = record.attempts
    assert attempt.outcome == "succeeded" and attempt.duration_ms is not None
    assert attempt.pid is not None and attempt.host
    assert record.progress is not None and record.progress["message"] == "half way"
    assert record.enqueued_at is not None and record.finished


def test_retry_then_success_keeps_every_attempt_in_order(
    real_broker: Broker, records: JobRecordStore
) -> None:
    runs: list[int] = []

    @dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"attempt {len(runs)} fails")

    message = flaky.send()
    with worker(real_broker):
        record = finished(records, message.message_id)
    assert record.state == "succeeded"
    assert states(record) == [
        "queued", "running", "retrying", "queued", "running", "retrying", "queued", "running",
        "succeeded",
    ]  # fmt: skip
    assert [(a.number, a.outcome, a.error_type) for a in record.attempts] == [
        (1, "failed", "RuntimeError"),
        (2, "failed", "RuntimeError"),
        (3, "succeeded", None),
    ]
    assert record.attempts[0].error == "attempt 1 fails"
    assert "RuntimeError" in (record.attempts[0].traceback or "")
    retrying = [change for change in record.history if change.state == "retrying"]
    assert all(change.due_at is not None for change in retrying)


def test_a_dead_letter_is_failed_and_points_to_it_and_its_replay_links_both_ways(
    real_broker: Broker, records: JobRecordStore
) -> None:
    fixed = False

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def broken() -> None:
        if not fixed:
            raise ValueError("no such image")

    message = broken.send()
    with worker(real_broker):
        record = finished(records, message.message_id)
        assert states(record) == ["queued", "running", "failed"]
        assert record.reason == "retries_exhausted"
        assert record.dead_letter == message.message_id
        with pytest.raises(JobFailed, match=r"failed \(retries_exhausted\): ValueError") as failure:
            records.wait(message.message_id, timeout=5)
        assert failure.value.record.attempts[0].error == "no such image"
        fixed = True
        report = dead_letter_store(real_broker).replay([message.message_id])
        new_id = report.replayed[message.message_id]
        replayed = finished(records, new_id)
    assert replayed.state == "succeeded" and replayed.replayed_from == message.message_id
    assert states(replayed) == ["queued", "running", "succeeded"]
    assert wait_until(
        lambda: (r := records.get(message.message_id)) is not None and r.replayed_as == new_id, 10
    )


def test_a_cancelled_queued_or_delayed_job_never_runs_even_after_its_delay(
    real_broker: Broker, records: JobRecordStore
) -> None:
    ran: list[str] = []

    @dramatiq.actor(queue_name=QUEUE)
    def note(tag: str) -> None:
        ran.append(tag)

    queued = note.send("queued")
    delayed = note.send_with_options(args=("delayed",), delay=1500)
    after = note.send_with_options(args=("after",), delay=2000)
    outcomes = records.cancel([queued.message_id, delayed.message_id])
    assert [(o.outcome, o.state) for o in outcomes] == [
        ("cancelled", "queued"),
        ("cancelled", "delayed"),
    ]
    with worker(real_broker):
        finished(records, after.message_id)  # past both delays
    assert ran == ["after"]
    for message, first in ((queued, "queued"), (delayed, "delayed")):
        record = records.show(message.message_id)
        assert record.state == "cancelled" and record.attempts == []
        assert states(record)[:2] == [first, "cancelled"]
        assert record.cancel_requested_at is not None
        with pytest.raises(JobFailed, match="was cancelled"):
            records.wait(message.message_id, timeout=1)
    [again] = records.cancel([queued.message_id])
    assert (again.outcome, again.state) == ("finished", "cancelled")


def test_a_running_job_is_interrupted_and_not_retried(
    real_broker: Broker, records: JobRecordStore
) -> None:
    started: list[str] = []

    @dramatiq.actor(queue_name=QUEUE, max_retries=5, min_backoff=10)
    def slow() -> None:
        started.append("x")
        for _ in range(600):
            time.sleep(0.05)

    message = slow.send()
    with worker(real_broker):
        assert wait_until(lambda: records.get(message.message_id).state == "running", 20)  # type: ignore[union-attr]
        [outcome] = records.cancel([message.message_id])
        assert outcome.outcome == "cancelling"
        record = finished(records, message.message_id)
    assert record.state == "cancelled"
    assert states(record) == ["queued", "running", "cancelled"]
    assert [a.outcome for a in record.attempts] == ["cancelled"]
    assert started == ["x"]  # not retried


def test_a_cooperative_job_sees_its_cancel_and_ends_cancelled(
    real_broker: Broker, records: JobRecordStore
) -> None:
    seen: list[bool] = []

    @dramatiq.actor(queue_name=QUEUE, cancel_mode="cooperative", max_retries=3)
    def careful() -> None:
        deadline = time.monotonic() + 30
        while not cancel_requested() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.append(cancel_requested())

    message = careful.send()
    with worker(real_broker):
        assert wait_until(lambda: records.get(message.message_id).state == "running", 20)  # type: ignore[union-attr]
        records.cancel([message.message_id])
        record = finished(records, message.message_id)
    assert seen == [True]
    assert record.state == "cancelled" and [a.outcome for a in record.attempts] == ["cancelled"]


def test_a_pipeline_is_listed_together_and_the_listing_filters(
    real_broker: Broker, records: JobRecordStore
) -> None:
    @dramatiq.actor(queue_name=QUEUE)
    def step(x: int = 0) -> int:
        return x + 1

    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def fails() -> None:
        raise ValueError("x")

    pipe = dramatiq.pipeline([step.message(1), step.message(), step.message()]).run()
    failing = fails.send()
    with worker(real_broker):
        finished(records, failing.message_id)
        assert wait_until(lambda: len(records.group(pipe.messages[0].message_id)) == 3, 20)
        last = pipe.messages[-1].message_id
        finished(records, last)
    members = records.group(pipe.messages[0].message_id)
    assert [m.id for m in members] == [m.message_id for m in pipe.messages]
    assert {m.state for m in members} == {"succeeded"}
    assert [r.id for r in records.find(states=["failed"])] == [failing.message_id]
    assert {r.id for r in records.find(actor="step")} == {m.message_id for m in pipe.messages}
    assert {r.id for r in records.find(queue=QUEUE, states=["succeeded"], limit=2)} <= {
        m.message_id for m in pipe.messages
    }
    assert len(records.find(queue=QUEUE, limit=2)) == 2
    assert records.find(actor="step", states=["failed"]) == []


def test_an_unknown_id_is_not_found_never_a_guessed_state(records: JobRecordStore) -> None:
    unknown = str(uuid.uuid4())
    assert records.get(unknown) is None
    with pytest.raises(UnknownJob, match="no job"):
        records.show(unknown)
    with pytest.raises(UnknownJob):
        records.wait(unknown, timeout=1)
    [outcome] = records.cancel([unknown])
    assert outcome.outcome == "not_found"


def test_a_wait_past_its_timeout_says_the_state(
    real_broker: Broker, records: JobRecordStore
) -> None:
    @dramatiq.actor(queue_name=QUEUE)
    def later() -> None:
        pass

    message = later.send_with_options(delay=60_000)
    with pytest.raises(WaitTimeout, match="still delayed"):
        records.wait(message.message_id, timeout=0.3)


def test_events_arriving_out_of_order_keep_the_latest_state(records: JobRecordStore) -> None:
    job = str(uuid.uuid4())
    at = (job, "a", "q")
    # A worker's claim and end reach the store before the sender's "queued".
    records.put(Event("e", *at, ordinal(1, 0, 3), "running", 2, fields={"?pr": "high"}))
    records.put(Event("e", *at, ordinal(1, 0, 4), "succeeded", 3))
    records.put(Event("e", *at, ordinal(1, 0, 0), "queued", 1, fields={"?pr": "low"}))
    records.flush()
    record = records.show(job)
    assert record.state == "succeeded"
    assert states(record) == ["queued", "running", "succeeded"]
    assert (record.actor, record.queue, record.priority) == ("a", "q", "high")


def test_a_cancel_announced_while_the_worker_was_not_listening_still_stops_the_job(
    real_broker: Broker, records: JobRecordStore
) -> None:
    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def long() -> None:
        for _ in range(600):
            time.sleep(0.05)

    message = long.send()
    with worker(real_broker):
        assert wait_until(lambda: records.get(message.message_id).state == "running", 20)  # type: ignore[union-attr]
        # The worker's subscription drops (this test's database's only: other tests' workers
        # share the server) and the cancel comes in the same transaction: the announcement
        # is published to no one, before redis-py can reconnect and subscribe again.
        db = int(records.client.connection_pool.connection_kwargs.get("db", 0))

        def subscribers() -> list[str]:  # the worker subscribes once booted, in its own time
            listening = records.client.client_list(_type="pubsub")
            return [client["id"] for client in listening if int(client["db"]) == db]

        assert wait_until(subscribers, 10)
        mine = subscribers()
        now = int(time.time() * 1000)
        with records.client.pipeline(transaction=True) as both:
            for client_id in mine:
                both.client_kill_filter(_id=client_id)
            cancel = ["cancel", message.message_id, now, records.channel, records.ttl_ms]
            records._script(args=cancel, client=both)
            *_, outcome = both.execute()
        assert outcome == [b"cancelling"]
        # Once subscribed again, the worker finds the cancel in the record.
        record = finished(records, message.message_id, timeout=15)
    assert record.state == "cancelled"


def test_an_id_is_found_from_a_unique_prefix_and_an_ambiguous_one_is_refused(
    records: JobRecordStore,
) -> None:
    ids = ["abcd1234-0000", "abcd1234-1111", "abce9999-0000"]
    for n, job_id in enumerate(ids):
        records.put(Event("e", job_id, "a", "q", ordinal(1, 0, 0), "queued", n + 1))
    records.flush()
    assert records.resolve("abce9999") == "abce9999-0000"  # a listing's short id
    assert records.resolve("abce") == "abce9999-0000"  # the shortest prefix taken
    assert records.resolve("abcd1234-1") == "abcd1234-1111"
    with pytest.raises(AmbiguousId, match="2 jobs have ids starting 'abcd1234'"):
        records.resolve("abcd1234")
    with pytest.raises(UnknownJob, match="no job with id starting 'ffff'"):
        records.resolve("ffff")


def test_a_later_delivery_of_a_job_recorded_as_finished_still_runs(
    records: JobRecordStore,
) -> None:
    """A record wrongly finished by an earlier delivery (a deferral's note read by another
    thread, say) must not drop a later one: only the same delivery given back is refused."""
    job = str(uuid.uuid4())
    at = (job, "a", "q")
    records.put(Event("e", *at, ordinal(1, 0, 0), "queued", 1))
    records.put(Event("e", *at, ordinal(1, 0, 4), "skipped", 2))
    records.flush()
    assert records.claim(Event("c", *at, ordinal(1, 0, 3), "", 3)).wait(5) == "done:skipped"
    # Run it (its record does not say what the job is: the start is to say it).
    assert records.claim(Event("c", *at, ordinal(1, 1, 3), "", 4)).wait(5) == UNKNOWN


def test_a_prefix_is_one_small_read_and_an_expired_job_is_not_found_by_it(
    records: JobRecordStore,
) -> None:
    """Ids are kept in buckets by their first 4 characters; a finished job's entry goes
    with its index entry once its record has expired."""
    client = records.client
    old_id, new_id = "beef0000-0000", "beef0000-1111"
    now = int(time.time() * 1000)
    for job_id in (old_id, new_id):
        records.put(Event("e", job_id, "a", "q", ordinal(1, 0, 0), "queued", now))
        records.put(Event("e", job_id, "a", "q", ordinal(1, 0, 4), "succeeded", now))
    records.flush()
    assert client.hlen("jobkit:jobs:p:beef") == 2
    # The old one finished two days ago: past the 24 h TTL, its record has expired.
    client.zadd("jobkit:jobs:s:succeeded", {old_id: now - 2 * 86_400_000})
    client.delete("jobkit:job:" + old_id)
    assert records.resolve("beef0000") == new_id  # the expired one does not count
    # The next finished job trims the expired entries, the prefix entry with them.
    records.put(Event("e", "feed0000", "a", "q", ordinal(1, 0, 4), "succeeded", now))
    records.flush()
    assert client.zscore("jobkit:jobs:s:succeeded", old_id) is None
    assert client.hkeys("jobkit:jobs:p:beef") == [b"0000-1111"]
