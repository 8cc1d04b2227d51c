"""Sentry: one event per job that fails for good, tagged, without arguments; none for deferrals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from dramatiq import Broker

from brokers.processes import start_process_group, stop_process_group
from tests.conftest import env_for, url_for
from tests.support.limited import declare_limited
from tests.support.logged import MARKERS_ENV, declare_logged
from tests.support.processes import REPO, child_env, jobkit_command, wait_until
from tests.support.sentry_sink import SentrySink

SECRET = "sk-live-SENTRY-CANARY"


def _ends(output: Path) -> list[dict]:
    events = []
    for line in output.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") in ("job.succeeded", "job.dead_lettered"):
            events.append(event)
    return events


def _run(
    real_broker: Broker, kind: str, tmp_path: Path, sink: SentrySink, **extra_env: str
) -> dict:
    output = tmp_path / "worker.out"
    env = child_env(
        url_for(kind),
        SENTRY_DSN=sink.dsn,
        JOBKIT_LOG_FORMAT="json",
        **{MARKERS_ENV: str(tmp_path)},
        **env_for(kind),
        **extra_env,
    )
    module = "tests.support.sentry_worker"
    workers = start_process_group(
        [*jobkit_command(), "worker", module, "-p", "1", "-t", "4", "-Q", "jobkit-test"],
        env=env,
        log=output,
        cwd=REPO,
    )
    logged, limited = declare_logged(real_broker), declare_limited(real_broker)
    doomed = logged.doomed.send(1, api_key=SECRET)
    logged.flaky.send(2, SECRET, "note", fail_first=True)
    for n in range(6):  # 20/s: most are deferred at least once
        limited.limited.send(n)
    try:
        assert wait_until(lambda: len(_ends(output)) >= 8, timeout=60), output.read_text()[-3000:]
        time.sleep(2.0)  # let a duplicate, if any, arrive
    finally:
        stop_process_group(workers)
    return {"doomed": doomed.message_id, "output": output.read_text()}


def test_one_event_for_a_job_that_exhausts_its_retries(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    with SentrySink() as sink:
        run = _run(real_broker, real_broker_kind, tmp_path, sink)
        assert wait_until(lambda: len(sink.events()) >= 1, timeout=10)
        events = sink.events()
        raw = sink.raw()
    assert '"job.rate_limited"' in run["output"], "nothing was deferred: the test proves less"
    assert len(events) == 1, [e.get("tags") for e in events]
    (event,) = events
    tags = event["tags"]
    assert tags["actor"] == "doomed"
    assert tags["queue"] == "jobkit-test"
    assert tags["message_id"] == run["doomed"]
    assert tags["outcome"] == "dead_lettered" and tags["attempt"] == "2"
    assert event["exception"]["values"][-1]["type"] == "ValueError"
    assert SECRET.encode() not in raw
    assert "job_arguments" not in event.get("contexts", {})


def test_retries_and_arguments_when_asked(redis_broker_kind: str, tmp_path: Path) -> None:
    from tests.conftest import flush, make_broker

    broker = make_broker(redis_broker_kind)
    flush(broker)
    try:
        with SentrySink() as sink:
            _run(
                broker,
                redis_broker_kind,
                tmp_path,
                sink,
                JOBKIT_SENTRY_REPORT_RETRIES="1",
                JOBKIT_SENTRY_SEND_ARGS="1",
            )
            assert wait_until(lambda: len(sink.events()) >= 3, timeout=10)
            events = sink.events()
    finally:
        flush(broker)
        broker.close()
    outcomes = sorted((e["tags"]["actor"], e["tags"]["outcome"]) for e in events)
    assert outcomes == [
        ("doomed", "dead_lettered"),
        ("doomed", "retry_scheduled"),
        ("flaky", "retry_scheduled"),
    ]
    doomed_final = next(e for e in events if e["tags"]["outcome"] == "dead_lettered")
    assert doomed_final["contexts"]["job_arguments"] == {"n": 1, "api_key": "[redacted]"}


@pytest.fixture(autouse=True)
def _no_sentry_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTRY_DSN", raising=False)


def test_the_quiet_loggers_match_dramatiqs_real_logger_names() -> None:
    """sentry-sdk ignores a logger whose name fnmatches a pattern: each pattern must hit."""
    from fnmatch import fnmatch

    from dramatiq.logging import get_logger
    from dramatiq.middleware import Retries

    from middleware.sentry import QUIET_LOGGERS

    names = [  # as dramatiq/worker.py and dramatiq/middleware/retries.py name them
        get_logger("dramatiq.worker", "WorkerThread").name,
        get_logger("dramatiq.worker", "ConsumerThread(default)").name,
        get_logger("dramatiq.middleware.retries", Retries).name,
    ]
    for name in names:
        assert any(fnmatch(name, pattern) for pattern in QUIET_LOGGERS), name
