"""Unique jobs: a second send of a pending key returns the first id, on every real broker."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker, Message
from dramatiq.middleware import MiddlewareError

from brokers import build_broker, queue_depths, send_many
from brokers.job_record_store import JobFailed, job_records
from middleware.job_records import cancel_requested
from middleware.unique_jobs import (
    DEDUPLICATED,
    KEY_PREFIX,
    UniqueJobs,
    UniqueJobsConfigError,
)
from tests.conftest import RABBITMQ_URL, REDIS_URL, env_for, url_for
from tests.support.processes import REPO, child_env, run_jobkit, wait_until, worker

QUEUE = "jobkit-test"
TIMEOUT = 30


def declare(broker: Broker, fn: Callable[..., Any], **options: Any) -> dramatiq.Actor:
    options.setdefault("unique_for", "10m")
    return dramatiq.actor(fn, broker=broker, queue_name=QUEUE, **options)


def report(report_id: int, day: str = "mon") -> None:
    """A job keyed by its report id."""


def ready(broker: Broker) -> int:
    depth = next(d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)
    return depth.ready + depth.delayed


def state_client(broker: Broker) -> redis.Redis:
    middleware = next(m for m in broker.middleware if isinstance(m, UniqueJobs))
    assert middleware.client is not None
    return middleware.client


# ---------------------------------------------------------------- declaration


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"unique_key": "report_id", "unique_for": None}, "unique_key needs unique_for"),
        ({"unique_key": "customer"}, "unique_key='customer' is not one of its arguments"),
        ({"unique_key": ("report_id", "hour")}, "unique_key='hour' is not one of its"),
        ({"unique_key": ("report_id", "report_id")}, "names an argument twice"),
        ({"unique_key": 5}, "must be an argument name, a tuple of names, or a callable"),
        ({"unique_key": ()}, "must be an argument name, a tuple of names, or a callable"),
        ({"unique_key": "report_id", "unique_for": "soon"}, "unique_for='soon' is not a duration"),
        ({"unique_key": "report_id", "unique_for": 0}, "unique_for=0 must be longer than 0"),
        ({"unique_key": "report_id", "unique_for": 1.5}, "unique_for=1.5 must be ms"),
        ({"unique_key": "report_id", "unique_until": "end"}, "unique_until='end' must be"),
        ({"unique_key": None, "unique_for": None, "unique_until": "start"}, "unique_until needs"),
        ({"unique_key": None}, "unique_for needs unique_key"),
    ],
)
def test_a_bad_option_fails_at_declaration_in_one_line(options: dict, expected: str) -> None:
    options = {"unique_for": "1h", **options}
    broker = build_broker(REDIS_URL)
    try:
        with pytest.raises(UniqueJobsConfigError) as raised:
            dramatiq.actor(report, broker=broker, queue_name=QUEUE, **options)
    finally:
        broker.close()
    text = str(raised.value)
    assert expected in text and "actor 'report'" in text and "\n" not in text
    assert isinstance(raised.value, MiddlewareError)  # so Dramatiq raises it, not logs it


def test_without_a_state_store_a_unique_actor_declares_but_refuses_to_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOBKIT_STATE_URL", raising=False)
    broker = build_broker(RABBITMQ_URL)
    try:
        actor = declare(broker, report, unique_key="report_id")
        with pytest.raises(UniqueJobsConfigError, match="set JOBKIT_STATE_URL to a Redis URL"):
            actor.send(1)
    finally:
        broker.close()


# ---------------------------------------------------------------- sending


def test_a_second_send_returns_the_first_id_and_enqueues_nothing(
    real_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobkit.unique_jobs")
    actor = declare(real_broker, report, unique_key="report_id")
    first = actor.send(7)
    second = actor.send(7)
    other = actor.send(8)
    assert second.message_id == first.message_id and second.options[DEDUPLICATED]
    assert DEDUPLICATED not in first.options and other.message_id != first.message_id
    assert ready(real_broker) == 2
    lines = [r.getMessage() for r in caplog.records if "job.deduplicated" in r.getMessage()]
    assert len(lines) == 1 and first.message_id in lines[0]
    duplicate_id = lines[0].split("duplicate_id=")[1].split()[0]
    assert duplicate_id != first.message_id
    records = job_records(real_broker)
    assert records.show(first.message_id).unique_key == "report_id=7"
    assert records.get(duplicate_id) is None  # no record of the send that was not made
    assert {job.id for job in records.find(actor="report")} == {first.message_id, other.message_id}


def test_twenty_concurrent_senders_of_one_key_make_one_job(real_broker: Broker) -> None:
    actor = declare(real_broker, report, unique_key="report_id")
    start = threading.Barrier(20)
    ids: list[str] = []

    def send() -> None:
        start.wait(timeout=TIMEOUT)
        ids.append(actor.send(42).message_id)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(ids) == 20 and len(set(ids)) == 1
    assert ready(real_broker) == 1


def test_concurrent_sender_processes_of_one_key_make_one_job(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    env = child_env(url_for(real_broker_kind), **env_for(real_broker_kind))
    senders = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.unique_app", str(go), "5"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(6)
    ]
    try:
        go.touch()
        outputs = [sender.communicate(timeout=120) for sender in senders]
    finally:
        for sender in senders:
            sender.kill()
    assert all(sender.returncode == 0 for sender in senders), outputs
    ids = {out.strip() for out, _ in outputs}
    assert len(ids) == 1, outputs
    assert ready(real_broker) == 1


def test_send_many_sends_one_job_per_key(real_broker: Broker) -> None:
    actor = declare(real_broker, report, unique_key="report_id")
    pending = actor.send(1)
    sent = send_many([actor.message(1), actor.message(2), actor.message(2)], broker=real_broker)
    assert [m.message_id for m in sent][0] == pending.message_id
    assert sent[1].message_id == sent[2].message_id != pending.message_id
    assert [bool(m.options.get(DEDUPLICATED)) for m in sent] == [True, False, True]
    assert ready(real_broker) == 2


def test_a_send_refused_after_the_key_was_taken_gives_it_back(real_broker: Broker) -> None:
    class Refuse(dramatiq.Middleware):
        def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
            if message.kwargs.get("day") == "never":
                raise MiddlewareError("refused on purpose")

    actor = declare(real_broker, report, unique_key="report_id")
    real_broker.middleware.append(Refuse())  # after UniqueJobs
    with pytest.raises(MiddlewareError, match="refused on purpose"):
        actor.send(3, day="never")
    sent = actor.send(3)
    assert DEDUPLICATED not in sent.options and ready(real_broker) == 1


def test_the_key_is_held_for_unique_for_plus_a_delay(real_broker: Broker) -> None:
    actor = declare(real_broker, report, unique_key="report_id", unique_for=5000)
    actor.send_with_options(args=(1,), delay=60_000)
    actor.send(2)
    client = state_client(real_broker)
    assert 55_000 < client.pttl(f"{KEY_PREFIX}:report:report_id=1") <= 65_000
    assert 0 < client.pttl(f"{KEY_PREFIX}:report:report_id=2") <= 5000
    assert actor.send_with_options(args=(1,), delay=10).options[DEDUPLICATED]


def test_tuple_and_callable_keys(real_broker: Broker) -> None:
    by_day = declare(real_broker, report, unique_key=("report_id", "day"))
    first = by_day.send(1, day="mon")
    assert by_day.send(1).message_id == first.message_id  # the default day: mon
    assert by_day.send(1, day="tue").message_id != first.message_id

    def greet(name: str, loud: bool = False) -> None: ...

    greeter = declare(real_broker, greet, unique_key=lambda name, loud=False: name.lower())
    ann = greeter.send("Ann")
    assert greeter.send("ANN", loud=True).message_id == ann.message_id
    assert greeter.send("Bob").message_id != ann.message_id
    assert job_records(real_broker).show(ann.message_id).unique_key == "ann"
    assert job_records(real_broker).show(first.message_id).unique_key == "report_id=1,day=mon"


def test_a_key_function_that_fails_fails_the_send_in_one_line(real_broker: Broker) -> None:
    def greet(name: str) -> None: ...

    raising = declare(real_broker, greet, unique_key=lambda name: name["first"])
    with pytest.raises(UniqueJobsConfigError, match="its unique_key raised TypeError"):
        raising.send("Ann")
    no_text = declare(real_broker, report, actor_name="numbered", unique_key=lambda *a, **k: 5)
    with pytest.raises(UniqueJobsConfigError, match="returned int 5, not a str"):
        no_text.send(1)
    assert ready(real_broker) == 0


# ---------------------------------------------------------------- releasing


def test_the_key_is_free_once_the_job_succeeded(real_broker: Broker) -> None:
    actor = declare(real_broker, report, unique_key="report_id")
    first = actor.send(1)
    with worker(real_broker):
        job_records(real_broker).wait(first.message_id, timeout=TIMEOUT)
        again = actor.send(1)
        assert again.message_id != first.message_id and DEDUPLICATED not in again.options
        job_records(real_broker).wait(again.message_id, timeout=TIMEOUT)


def test_the_key_is_free_once_the_job_failed_for_good(real_broker: Broker) -> None:
    def broken(n: int) -> None:
        raise ValueError("broken on purpose")

    actor = declare(real_broker, broken, unique_key="n", max_retries=0)
    first = actor.send(1)
    with worker(real_broker):
        with pytest.raises(JobFailed, match="dead letter"):
            job_records(real_broker).wait(first.message_id, timeout=TIMEOUT)
        assert actor.send(1).message_id != first.message_id


def test_the_key_is_free_once_a_queued_job_is_cancelled(real_broker: Broker) -> None:
    actor = declare(real_broker, report, unique_key="report_id")
    first = actor.send(1)
    records = job_records(real_broker)
    assert [o.outcome for o in records.cancel([first.message_id])] == ["cancelled"]
    again = actor.send(1)
    assert again.message_id != first.message_id
    with worker(real_broker):  # the cancelled one is skipped, the new one runs
        records.wait(again.message_id, timeout=TIMEOUT)
        assert records.show(first.message_id).state == "cancelled"


def test_the_key_is_free_once_a_running_job_is_cancelled(real_broker: Broker) -> None:
    def waits(n: int) -> None:
        while not cancel_requested():
            threading.Event().wait(0.01)

    actor = declare(real_broker, waits, unique_key="n", cancel_mode="cooperative")
    first = actor.send(1)
    records = job_records(real_broker)
    with worker(real_broker):
        assert wait_until(lambda: records.show(first.message_id).state == "running", TIMEOUT)
        assert actor.send(1).message_id == first.message_id  # running: still held
        assert [o.outcome for o in records.cancel([first.message_id])] == ["cancelling"]
        with pytest.raises(JobFailed, match="cancelled"):
            records.wait(first.message_id, timeout=TIMEOUT)
        again = actor.send(1)
        assert again.message_id != first.message_id
        records.cancel([again.message_id])


def test_the_key_is_free_once_its_window_ends(real_broker: Broker) -> None:
    actor = declare(real_broker, report, unique_key="report_id", unique_for=300)
    first = actor.send(1)
    assert wait_until(lambda: actor.send(1).message_id != first.message_id, TIMEOUT)
    assert ready(real_broker) == 2


def test_a_retrying_job_holds_its_key_until_it_succeeds(real_broker: Broker) -> None:
    go = threading.Event()
    runs: list[int] = []

    def flaky(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            raise RuntimeError("fails once on purpose")
        go.wait(TIMEOUT)

    actor = declare(
        real_broker, flaky, unique_key="n", max_retries=3, min_backoff=1500, max_backoff=3000
    )
    first = actor.send(1)
    records = job_records(real_broker)
    with worker(real_broker):
        assert wait_until(lambda: records.show(first.message_id).state == "retrying", TIMEOUT)
        # Waiting for its retry (or, on a slow machine, already running it): still held.
        assert actor.send(1).message_id == first.message_id
        go.set()
        records.wait(first.message_id, timeout=TIMEOUT)
        assert len(records.show(first.message_id).attempts) == 2
        assert actor.send(1).message_id != first.message_id


def test_unique_until_start_frees_the_key_when_the_job_starts(real_broker: Broker) -> None:
    go = threading.Event()

    def slow(n: int) -> None:
        go.wait(TIMEOUT)

    actor = declare(real_broker, slow, unique_key="n", unique_until="start")
    first = actor.send(1)
    assert actor.send(1).message_id == first.message_id
    records = job_records(real_broker)
    with worker(real_broker):
        assert wait_until(lambda: records.show(first.message_id).state == "running", TIMEOUT)
        second = actor.send(1)
        assert second.message_id != first.message_id
        go.set()
        records.wait(second.message_id, timeout=TIMEOUT)


def test_a_late_release_leaves_a_newer_job_s_key_alone(real_broker: Broker) -> None:
    actor = declare(real_broker, report, unique_key="report_id")
    first = actor.send(1)
    key = f"{KEY_PREFIX}:report:report_id=1"
    state_client(real_broker).set(key, "newer-job")  # as if the window ended and one was sent
    with worker(real_broker):
        job_records(real_broker).wait(first.message_id, timeout=TIMEOUT)
    assert state_client(real_broker).get(key) == b"newer-job"


# ---------------------------------------------------------------- fronts and faults


def test_jobkit_send_says_a_duplicate_was_not_sent(
    real_broker: Broker, real_broker_kind: str
) -> None:
    env = child_env(url_for(real_broker_kind), **env_for(real_broker_kind))
    app = ("--app", "tests.support.unique_app")
    first = run_jobkit(*app, "send", "build_report", "9", env=env)
    second = run_jobkit(*app, "send", "build_report", "9", env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    first_id = first.stdout.split("message id ")[1].rstrip(")\n")
    assert "not sent: build_report with unique key 'report_id=9' is already pending" in (
        second.stdout
    )
    assert first_id in second.stdout
    assert ready(real_broker) == 1


def test_with_the_state_store_down_jobs_are_sent_undeduplicated_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("JOBKIT_STATE_URL", "redis://127.0.0.1:9/0")  # nothing listens there
    caplog.set_level(logging.WARNING, logger="jobkit.unique_jobs")
    broker = build_broker(RABBITMQ_URL)
    try:
        actor = declare(broker, report, unique_key="report_id")
        ids = {actor.send(1).message_id for _ in range(3)}
        assert len(ids) == 3
        warnings = [r for r in caplog.records if "unique_jobs.store_down" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        broker.flush_all()
        broker.close()
