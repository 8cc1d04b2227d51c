"""Job records and cancelling under races and faults: redis, rabbitmq (+ state Redis), embedded."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker

from brokers import build_broker
from brokers.dead_letter_store import dead_letter_store
from brokers.job_record_store import (
    JobRecord,
    JobRecordStore,
    ResultTooLarge,
    UnknownJob,
    WaitTimeout,
    job_records,
)
from middleware.job_records import JobRecords, cancel_requested
from middleware.record_sink import (
    CLAIM,
    CREATED,
    EVENT,
    NEW_ATTEMPT,
    START,
    UNKNOWN,
    ClaimReply,
    Event,
    PendingClaim,
    ordinal,
)
from tests.conftest import REDIS_URL, env_for, flush, make_broker, url_for
from tests.faults.private_redis import PrivateRedis
from tests.support.processes import child_env, stop_group, wait_until, worker
from tests.support.recovery import BLOCK_FLAG_ENV, declare_blocking, start_workers

QUEUE = "jobkit-test"
#: Where the tests' jobs leave their side effect: a list in the test Redis, outside any broker.
RAN = "jobkit-test:ran"
#: ``JOBKIT_FAULTS_FULL=1`` races a cancel with a job's start ten times as often.
ROUNDS = 500 if os.environ.get("JOBKIT_FAULTS_FULL") == "1" else 50
#: How much the delay before a cancel changes from one round to the next.
STEP_S = 0.001


@pytest.fixture
def side_effects() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(RAN)
    try:
        yield client
    finally:
        client.delete(RAN)
        client.close()


def runs_of(client: redis.Redis, token: str) -> int:
    return sum(1 for item in client.lrange(RAN, 0, -1) if item.decode() == token)


def finished(records: JobRecordStore, job_id: str, timeout: float = 30) -> JobRecord:
    assert wait_until(lambda: (r := records.get(job_id)) is not None and r.finished, timeout), (
        records.get(job_id)
    )
    record = records.get(job_id)
    assert record is not None
    return record


def states(record: JobRecord) -> list[str]:
    return [change.state for change in record.history]


def skipped_lines(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "jobkit.job_records"
        and job_id in r.getMessage()
        and "not run" in r.getMessage()
    ]


# ------------------------------------------------------------------ a cancel racing the start


def test_a_cancel_racing_the_start_has_exactly_one_outcome(
    real_broker: Broker, side_effects: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobkit.job_records")

    def noop(token: str) -> None:
        side_effects.rpush(RAN, token)

    actor = dramatiq.actor(noop, broker=real_broker, queue_name=QUEUE, max_retries=3)
    records = job_records(real_broker)
    seed = random.randrange(2**32)
    chance = random.Random(seed)
    seen: dict[str, int] = {}
    runs: dict[str, int] = {}  # token -> side effects when its round ended
    delay = 0.0
    with worker(real_broker, threads=2, queues={QUEUE}):
        for round_ in range(ROUNDS):
            token = uuid.uuid4().hex
            message = actor.send(token)
            # A staircase on the delay before the cancel keeps it near the job's start: a
            # later cancel after a "cancelled", an earlier one after a "finished".
            time.sleep(delay * chance.uniform(0.5, 1.5))
            (cancel,) = records.cancel([message.message_id])
            where = f"round {round_} (seed {seed}): cancel said {cancel.outcome}"
            assert cancel.id == message.message_id, where
            record = finished(records, message.message_id)
            if cancel.outcome == "cancelled":
                # The worker takes it, claims it, and skips it: wait for that before counting.
                assert wait_until(lambda: skipped_lines(caplog, message.message_id), 30), where  # noqa: B023
                assert record.state == "cancelled" and record.attempts == [], (where, record)
                assert states(record) == ["queued", "cancelled"], (where, record)
                assert runs_of(side_effects, token) == 0, where
                runs[token] = 0
            elif cancel.outcome == "cancelling" and not record.attempts:
                # Its worker held it, not started: told of the cancel, it never started it.
                assert wait_until(lambda: skipped_lines(caplog, message.message_id), 30), where  # noqa: B023
                assert record.state == "cancelled", (where, record)
                assert states(record) == ["queued", "cancelled"], (where, record)
                assert runs_of(side_effects, token) == 0, where
                runs[token] = 0
            elif cancel.outcome == "cancelling":
                # It was running: interrupted (before or after its side effect), or it had
                # returned already when the cancel reached its worker (then it succeeded).
                assert record.state in ("cancelled", "succeeded"), (where, record)
                assert [a.outcome for a in record.attempts] == [record.state], (where, record)
                assert states(record) == ["queued", "running", record.state], (where, record)
                ran = runs_of(side_effects, token)
                assert ran == 1 if record.state == "succeeded" else ran <= 1, (where, ran)
                runs[token] = ran
            else:
                assert cancel.outcome == "finished" and cancel.state == "succeeded", where
                assert record.state == "succeeded", (where, record)
                assert [a.outcome for a in record.attempts] == ["succeeded"], (where, record)
                assert states(record) == ["queued", "running", "succeeded"], (where, record)
                assert runs_of(side_effects, token) == 1, where
                runs[token] = 1
            assert record.cancel_requested_at is not None or cancel.outcome == "finished", where
            ended = f"{cancel.outcome} -> {record.state}"
            seen[ended] = seen.get(ended, 0) + 1
            if cancel.outcome == "cancelled":
                delay += STEP_S
            elif cancel.outcome == "finished":
                delay = max(delay - STEP_S, 0.0)
    # No job ran (again) after its round: no late retry, no second delivery.
    assert sorted(item.decode() for item in side_effects.lrange(RAN, 0, -1)) == sorted(
        token for token, ran in runs.items() for _ in range(ran)
    ), seed
    assert dead_letter_store(real_broker).count() == 0
    print(f"cancel outcomes over {ROUNDS} rounds (seed {seed}): {seen}")


# ------------------------------------------------------------------ running, delayed, retrying


def long_job(side_effects: redis.Redis) -> Callable[[str], None]:
    def job(token: str) -> None:
        """Starts, then waits (at most 20 s) and stops early when told it was cancelled."""
        side_effects.rpush(RAN, token)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if cancel_requested():
                side_effects.rpush(RAN, f"{token}:saw the cancel")
                return
            time.sleep(0.01)
        side_effects.rpush(RAN, f"{token}:done")

    return job


def job_lines(caplog: pytest.LogCaptureFixture, job_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "jobkit.jobs" and job_id in r.getMessage()]


@pytest.mark.parametrize("mode", ["interrupted", "cooperative"])
def test_a_running_job_cancelled_ends_cancelled_and_is_not_retried(
    real_broker: Broker, side_effects: redis.Redis, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO)
    options = {"cancel_mode": "cooperative"} if mode == "cooperative" else {}
    actor = dramatiq.actor(
        long_job(side_effects), actor_name="long_job", broker=real_broker, queue_name=QUEUE,
        max_retries=3, min_backoff=100, max_backoff=100, **options,
    )  # fmt: skip
    records = job_records(real_broker)
    with worker(real_broker, threads=2, queues={QUEUE}):
        message = actor.send("a")
        assert wait_until(lambda: runs_of(side_effects, "a") == 1, 30)
        assert records.show(message.message_id).state == "running"
        (cancel,) = records.cancel([message.message_id])
        assert (cancel.outcome, cancel.state) == ("cancelling", None)
        # A retry would be sent before the attempt's ack, so before its record's last event.
        record = finished(records, message.message_id)
    assert record.state == "cancelled", record
    assert states(record) == ["queued", "running", "cancelled"]
    assert [(a.number, a.outcome) for a in record.attempts] == [(1, "cancelled")]
    assert record.cancel_requested_at is not None
    saw = runs_of(side_effects, "a:saw the cancel")
    assert (saw, runs_of(side_effects, "a:done"), runs_of(side_effects, "a")) == (
        int(mode == "cooperative"), 0, 1,
    )  # fmt: skip
    assert dead_letter_store(real_broker).count() == 0
    lines = job_lines(caplog, message.message_id)
    cancelled = [r for r in lines if "job.cancelled" in r.getMessage()]
    assert [r.levelno for r in cancelled] == [logging.INFO], [r.getMessage() for r in lines]
    assert not [r for r in lines if "job.retry_scheduled" in r.getMessage()]
    assert not [r for r in lines if "job.succeeded" in r.getMessage()]
    # Dramatiq's "Failed to process message ..." ERROR with its traceback is not logged.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in errors if r.name.startswith(("dramatiq", "jobkit"))], caplog.text


@pytest.mark.parametrize("mode", ["interrupted", "cooperative"])
def test_a_cancel_that_reaches_the_worker_before_the_job_is_registered_still_stops_it(
    real_broker: Broker, side_effects: redis.Redis, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The claim said "run" and the cancel came right after it, while the job waited for a
    worker thread: the worker, which holds it, is told, and the job never starts."""
    options = {"cancel_mode": "cooperative"} if mode == "cooperative" else {}
    actor = dramatiq.actor(
        long_job(side_effects), actor_name="long_job", broker=real_broker, queue_name=QUEUE,
        max_retries=3, **options,
    )  # fmt: skip
    records = job_records(real_broker)
    claim = records.claim
    answers = []

    def claim_then_cancel(event: Event) -> PendingClaim:
        pending = claim(event)
        pending.wait(5.0)
        answers.extend(records.cancel([event.job_id]))
        time.sleep(0.5)  # for the announcement to reach this worker before the job starts
        return pending

    monkeypatch.setattr(records, "claim", claim_then_cancel)
    with worker(real_broker, threads=1, queues={QUEUE}):
        message = actor.send("b")
        record = finished(records, message.message_id)
    assert [a.outcome for a in answers] == ["cancelling"]
    assert record.state == "cancelled", record
    assert states(record) == ["queued", "cancelled"]
    assert record.attempts == []
    assert runs_of(side_effects, "b") == 0


def test_a_cancel_that_comes_as_a_failed_attempt_ends_cancels_its_retry(
    real_broker: Broker, side_effects: redis.Redis, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The attempt has ended (failed), Retries has not sent the next one yet: it never runs."""
    caplog.set_level(logging.INFO, logger="jobkit.job_records")

    def failing(token: str) -> None:
        side_effects.rpush(RAN, token)
        raise RuntimeError("fails")

    actor = dramatiq.actor(
        failing, broker=real_broker, queue_name=QUEUE, max_retries=3, min_backoff=100,
        max_backoff=100,
    )  # fmt: skip
    records = job_records(real_broker)
    middleware = next(m for m in real_broker.middleware if isinstance(m, JobRecords))
    ended = middleware.after_process_message
    answers = []

    def ended_then_cancelled(broker: Broker, message: Any, **outcome: Any) -> None:
        ended(broker, message, **outcome)
        answers.extend(records.cancel([message.message_id]))
        time.sleep(0.5)  # for the announcement to reach this worker before Retries looks

    monkeypatch.setattr(middleware, "after_process_message", ended_then_cancelled)
    with worker(real_broker, threads=2, queues={QUEUE}):
        message = actor.send("g")
        record = finished(records, message.message_id)
        assert wait_until(lambda: skipped_lines(caplog, message.message_id), 30)
    assert [a.outcome for a in answers] == ["cancelling"]
    assert record.state == "cancelled", record
    assert states(record) == ["queued", "running", "retrying", "cancelled"]
    assert [(a.number, a.outcome) for a in record.attempts] == [(1, "failed")]
    assert runs_of(side_effects, "g") == 1
    assert dead_letter_store(real_broker).count() == 0


def test_a_delayed_job_cancelled_before_it_is_due_never_runs(
    real_broker: Broker, side_effects: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobkit.job_records")

    def later(token: str) -> None:
        side_effects.rpush(RAN, token)

    actor = dramatiq.actor(later, broker=real_broker, queue_name=QUEUE, max_retries=3)
    records = job_records(real_broker)
    with worker(real_broker, threads=2, queues={QUEUE}):
        message = actor.send_with_options(args=("c",), delay=2000)
        assert records.show(message.message_id).state == "delayed"
        (cancel,) = records.cancel([message.message_id])
        assert (cancel.outcome, cancel.state) == ("cancelled", "delayed")
        # When it is due the worker takes it, and its claim says it was cancelled.
        assert wait_until(lambda: skipped_lines(caplog, message.message_id), 30)
        assert records.cancel([message.message_id])[0].outcome == "finished"
    record = records.show(message.message_id)
    assert (record.state, record.attempts) == ("cancelled", [])
    assert states(record) == ["delayed", "cancelled"]
    assert runs_of(side_effects, "c") == 0
    assert dead_letter_store(real_broker).count() == 0


def test_a_job_waiting_for_its_retry_cancelled_never_runs_again(
    real_broker: Broker, side_effects: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobkit.job_records")

    def flaky(token: str) -> None:
        side_effects.rpush(RAN, token)
        raise RuntimeError("fails until it is cancelled")

    actor = dramatiq.actor(
        flaky, broker=real_broker, queue_name=QUEUE, max_retries=3, min_backoff=2000,
        max_backoff=2000,
    )  # fmt: skip
    records = job_records(real_broker)
    with worker(real_broker, threads=2, queues={QUEUE}):
        message = actor.send("d")
        assert wait_until(lambda: records.show(message.message_id).state == "retrying", 30)
        (cancel,) = records.cancel([message.message_id])
        assert (cancel.outcome, cancel.state) == ("cancelled", "retrying")
        assert wait_until(lambda: skipped_lines(caplog, message.message_id), 30)
    record = records.show(message.message_id)
    assert record.state == "cancelled"
    assert states(record) == ["queued", "running", "retrying", "cancelled"]
    assert [(a.number, a.outcome) for a in record.attempts] == [(1, "failed")]
    assert runs_of(side_effects, "d") == 1
    assert dead_letter_store(real_broker).count() == 0


def test_a_job_cancelled_while_its_worker_died_is_not_run_again_nor_given_an_attempt(
    real_broker: Broker,
) -> None:
    """Its message comes back (the worker was killed mid-job): the claim refuses it."""
    records = job_records(real_broker)
    job_id = str(uuid.uuid4())

    step = ordinal(1, 0, START)

    def claim(ms: int) -> ClaimReply:
        return records.claim(Event(CLAIM, job_id, "a", QUEUE, step, "", ms)).wait(5.0)

    records.put(Event(EVENT, job_id, "a", QUEUE, ordinal(1, 0, CREATED), "queued", 1000))
    assert claim(2000) == UNKNOWN
    start = json.dumps({"s": 2000, "w": "h:1"})
    records.put(Event(EVENT, job_id, "a", QUEUE, step, "running", 2000, "", {NEW_ATTEMPT: start}))
    assert [c.outcome for c in records.cancel([job_id])] == ["cancelling"]
    assert claim(3000) == "cancelled"  # the same delivery again, after its worker died
    record = records.show(job_id)
    assert record.state == "cancelled"
    assert [(a.number, a.outcome) for a in record.attempts] == [(1, "interrupted")]
    assert states(record) == ["queued", "running", "cancelled"]


# ------------------------------------------------------------------ the state store down


@pytest.fixture
def state_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "state")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_jobs_run_while_the_state_store_is_down_and_their_records_follow(
    real_broker_kind: str, state_redis: PrivateRedis, side_effects: redis.Redis,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The state (records) lives in a Redis of the test's own, apart from the broker: stopped
    twice while jobs run."""
    caplog.set_level(logging.WARNING, logger="jobkit.job_records")
    monkeypatch.setenv("JOBKIT_STATE_URL", state_redis.url)
    broker = build_broker(url_for(real_broker_kind))
    flush(broker)

    def quick(token: str) -> None:
        side_effects.rpush(RAN, token)

    try:
        actor = dramatiq.actor(quick, broker=broker, queue_name=QUEUE, max_retries=3)
        records = job_records(broker)
        sent: list[tuple[str, str]] = []

        def send(count: int) -> list[tuple[str, str]]:
            batch = [
                (token := uuid.uuid4().hex, actor.send(token).message_id) for _ in range(count)
            ]
            sent.extend(batch)
            return batch

        def warnings(text: str) -> int:
            return sum(text in r.getMessage() for r in caplog.records)

        with worker(broker, threads=2, queues={QUEUE}):
            for _, job_id in send(3):
                assert finished(records, job_id).state == "succeeded"
            for outage in (1, 2):
                state_redis.kill()
                during = send(20)
                # Jobs go on: a claim the store cannot answer does not hold them for long.
                assert wait_until(
                    lambda: all(runs_of(side_effects, t) == 1 for t, _ in during),  # noqa: B023
                    30,
                ), outage
                assert warnings("the state store does not answer") == outage
                assert warnings("are written again") == outage - 1
                state_redis.start()
                assert wait_until(lambda: warnings("are written again") == outage, 30), outage  # noqa: B023
                for _, job_id in during:
                    record = finished(records, job_id)
                    assert record.state == "succeeded", record
                    assert states(record) == ["queued", "running", "succeeded"], record
                    assert [(a.number, a.outcome) for a in record.attempts] == [(1, "succeeded")]
        assert warnings("the state store does not answer") == 2
        assert warnings("are written again") == 2
        assert all(runs_of(side_effects, token) == 1 for token, _ in sent)
    finally:
        flush(broker)
        broker.close()


# ------------------------------------------------------------------ a worker killed mid-job


@pytest.mark.slow
def test_a_worker_killed_mid_job_shows_an_interrupted_attempt_then_the_rerun(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    flag = tmp_path / "block"
    flag.touch()
    env = child_env(
        url_for(real_broker_kind),
        JOBKIT_TEST_JOB_LOG=str(tmp_path / "jobs.jsonl"),
        JOBKIT_HEARTBEAT_TIMEOUT_MS="2000",
        **env_for(real_broker_kind),
        **{BLOCK_FLAG_ENV: str(flag)},
    )
    message = declare_blocking(real_broker).send(1)
    records = job_records(real_broker)
    doomed = start_workers(env, tmp_path / "doomed.log", 1)
    rescuer = None
    try:
        assert wait_until(lambda: records.show(message.message_id).state == "running", 60), (
            tmp_path / "doomed.log"
        ).read_text()[-3000:]
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        flag.unlink()  # the rerun returns at once
        rescuer = start_workers(env, tmp_path / "rescuer.log", 1)
        record = finished(records, message.message_id, timeout=60)
    finally:
        if doomed.poll() is None:
            stop_group(doomed)
        if rescuer is not None:
            stop_group(rescuer)
    assert record.state == "succeeded", record
    assert [(a.number, a.outcome) for a in record.attempts] == [
        (1, "interrupted"), (2, "succeeded"),
    ]  # fmt: skip
    assert states(record) == ["queued", "running", "running", "succeeded"]
    assert record.attempts[0].pid != record.attempts[1].pid


# ------------------------------------------------------------------ a redelivery after success


def test_a_job_delivered_again_after_it_succeeded_does_not_run_again(
    real_broker: Broker, side_effects: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """As when its ack was lost: the same message (same id) reaches a worker again."""
    caplog.set_level(logging.INFO, logger="jobkit.job_records")

    def once(token: str) -> None:
        side_effects.rpush(RAN, token)

    actor = dramatiq.actor(once, broker=real_broker, queue_name=QUEUE, max_retries=3)
    records = job_records(real_broker)
    with worker(real_broker, threads=2, queues={QUEUE}):
        message = actor.send("e")
        before = finished(records, message.message_id)
        real_broker.enqueue(message)
        assert wait_until(lambda: skipped_lines(caplog, message.message_id), 30)
    assert "already ended (succeeded)" in skipped_lines(caplog, message.message_id)[0]
    assert runs_of(side_effects, "e") == 1
    assert records.show(message.message_id) == before


# ------------------------------------------------------------------ bad input


def test_waiting_too_long_and_unknown_ids_are_clear_errors(real_broker: Broker) -> None:
    def idle() -> None: ...

    actor = dramatiq.actor(idle, broker=real_broker, queue_name=QUEUE)
    records = job_records(real_broker)
    message = actor.send()  # no worker: it stays queued
    with pytest.raises(WaitTimeout, match=f"job {message.message_id} is still queued after 0.3 s"):
        records.wait(message.message_id, timeout=0.3)
    unknown = str(uuid.uuid4())
    for bad in (unknown, "not an id"):
        assert records.get(bad) is None
        with pytest.raises(UnknownJob) as error:
            records.show(bad)
        assert "\n" not in str(error.value) and "jobkit jobs list" in str(error.value)
        with pytest.raises(UnknownJob):
            records.wait(bad, timeout=1)
    assert [c.outcome for c in records.cancel([unknown])] == ["not_found"]


@pytest.fixture
def small_results(real_broker_kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    monkeypatch.setenv("JOBKIT_JOB_RESULT_MAX_BYTES", "100")
    broker = make_broker(real_broker_kind)
    dramatiq.set_broker(broker)
    flush(broker)
    try:
        yield broker
    finally:
        flush(broker)
        broker.close()


def test_a_result_too_large_or_not_json_is_not_kept_and_waiting_says_so(
    small_results: Broker,
) -> None:
    def make(kind: str) -> object:
        return {"big": "x" * 200} if kind == "big" else {1, 2} if kind == "set" else [kind]

    actor = dramatiq.actor(
        make, broker=small_results, queue_name=QUEUE, store_results=True, max_retries=0
    )
    records = job_records(small_results)
    with worker(small_results, threads=2, queues={QUEUE}):
        big, odd, fine = (actor.send(kind).message_id for kind in ("big", "set", "ok"))
        assert records.wait(fine, timeout=30) == ["ok"]
        with pytest.raises(ResultTooLarge, match="over JOBKIT_JOB_RESULT_MAX_BYTES=100"):
            records.wait(big, timeout=30)
        with pytest.raises(ResultTooLarge, match="not JSON"):
            records.wait(odd, timeout=30)
    for job_id in (big, odd):
        record = records.show(job_id)
        assert record.state == "succeeded" and not record.has_result and record.result_error


# ------------------------------------------------------------------ replaying a dead letter


def test_a_replayed_dead_letter_and_its_replay_point_to_each_other(
    real_broker: Broker, side_effects: redis.Redis
) -> None:
    def fragile(token: str) -> None:
        if not side_effects.exists("jobkit-test:fixed"):
            raise ValueError("not fixed yet")
        side_effects.rpush(RAN, token)

    side_effects.delete("jobkit-test:fixed")
    actor = dramatiq.actor(fragile, broker=real_broker, queue_name=QUEUE, max_retries=0)
    records = job_records(real_broker)
    store = dead_letter_store(real_broker)
    try:
        with worker(real_broker, threads=2, queues={QUEUE}):
            message = actor.send("f")
            failed = finished(records, message.message_id)
            assert failed.state == "failed" and failed.dead_letter == message.message_id
            side_effects.set("jobkit-test:fixed", 1)
            report = store.replay([message.message_id])
            new_id = report.replayed[message.message_id]
            replayed = finished(records, new_id)
    finally:
        side_effects.delete("jobkit-test:fixed")
    old = records.show(message.message_id)
    assert (old.state, old.replayed_as, old.replayed_from) == ("failed", new_id, None)
    assert states(old) == ["queued", "running", "failed"]
    assert (replayed.state, replayed.replayed_from, replayed.replayed_as) == (
        "succeeded", message.message_id, None,
    )  # fmt: skip
    assert states(replayed) == ["queued", "running", "succeeded"]
    assert runs_of(side_effects, "f") == 1
    assert store.count() == 0
