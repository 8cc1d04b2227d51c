"""Structured job logs: JSON lines, lifecycle events, context in actor logs, redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Broker

from brokers.processes import start_process_group, stop_process_group
from middleware import job_events, log_config
from middleware.job_events import JsonJobEvents
from middleware.log_config import configure_logging
from middleware.log_processors import SafeRecords
from middleware.log_streams import CHUNK_CHARS, LineBuffer, SerializedStream
from middleware.redaction import REDACTED, Redactor, escape_control
from tests.conftest import env_for, url_for
from tests.support.logged import MARKERS_ENV, declare_logged
from tests.support.processes import REPO, child_env, jobkit_command, start_dramatiq, wait_until

SECRET = "hunter2-SECRET-value"
FORGED = 'ok\n{"event": "job.succeeded", "forged": true}\r\nFORGED-LINE'

# ---------------------------------------------------------------- unit


def test_secrets_are_redacted_by_argument_name_positional_or_keyword() -> None:
    def job(user: str, password: str, options: dict, api_key: str = "") -> None: ...

    redactor = Redactor()
    safe = redactor.arguments(
        job, ("ann", SECRET), {"options": {"token": SECRET, "x": 1}, "api_key": SECRET}
    )
    assert safe == {
        "user": "ann",
        "password": REDACTED,
        "options": {"token": REDACTED, "x": 1},
        "api_key": REDACTED,
    }


def test_long_values_are_cut_and_control_characters_escaped() -> None:
    assert Redactor(max_value=5).value("abcdefghij") == "abcd…"  # at most max_value
    error = "could not parse " + "x" * 10_000 + " at line 3"
    logged = Redactor(max_value=200).value(error)
    assert logged.startswith("could not parse x") and logged.endswith("x at line 3")
    assert "characters cut]" in logged and len(logged) <= 200
    assert escape_control("a\nb\rc\x1b[31m") == "a\\x0ab\\x0dc\\x1b[31m"


def test_dramatiq_messages_in_log_records_lose_their_arguments() -> None:
    import dramatiq

    message = dramatiq.Message(
        queue_name="q", actor_name="login", args=(SECRET,), kwargs={}, options={}
    )
    record = logging.LogRecord("dramatiq.x", logging.INFO, "", 0, "Got %s", (message,), None)
    assert SafeRecords().filter(record)
    assert SECRET not in record.getMessage()
    assert message.message_id in record.getMessage()


@pytest.fixture
def own_logging(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Let a test configure this process's logging, then put everything back."""
    import structlog

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    monkeypatch.setattr(log_config, "CONFIGURED", log_config.CONFIGURED)
    for name in ("JOB_EVENTS", "_line_buffer"):
        monkeypatch.setattr(job_events, name, getattr(job_events, name))
    was_configured, saved_structlog = structlog.is_configured(), structlog.get_config()
    root.handlers = []
    yield
    root.handlers, root.level = saved_handlers, saved_level
    if was_configured:
        structlog.configure(**saved_structlog)
    else:
        structlog.reset_defaults()  # "not configured", so JobLogging configures it again


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_value_with_newlines_cannot_start_a_new_line(fmt: str, own_logging: None) -> None:
    import io

    import structlog

    stream = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(stream))
    configure_logging(fmt, force=True)
    logging.getLogger("app").warning("value: %s", FORGED)
    structlog.get_logger("app").warning("event", note=FORGED)
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    assert len(lines) == 2
    assert not any(line.startswith("FORGED") or line.startswith('{"event": "job') for line in lines)
    if fmt == "json":
        assert [json.loads(line)["level"] for line in lines] == ["warning", "warning"]


def _attempt(**message: Any) -> Any:
    from dramatiq import Message

    from middleware.deliveries import Attempt

    fields = {"queue_name": "q", "actor_name": "a", "args": (), "kwargs": {}, "options": {}}
    return Attempt(Message(**{**fields, **message}))


def _json_events() -> tuple[logging.StreamHandler, LineBuffer, JsonJobEvents]:
    """Job events into a line buffer over a StringIO, flushed only when a test says so."""
    handler = logging.StreamHandler(io.StringIO())
    sink = LineBuffer(handler, interval=3600)
    return handler, sink, JsonJobEvents(sink, logging.INFO)


def test_job_events_render_static_fields_and_values_orjson_cannot_take() -> None:
    handler, sink, events = _json_events()
    attempt = _attempt(options={"priority": "normal"})
    events.job_started(attempt, {"n": {1: object()}})
    attempt.finish()
    events.job_succeeded(attempt)
    sink.flush_now()
    started, succeeded = (json.loads(line) for line in handler.stream.getvalue().splitlines())
    assert started["args"] == {"n": {"1": started["args"]["n"]["1"]}}
    assert started["args"]["n"]["1"].startswith("<object object")  # repr, as structlog's
    assert started["logger"] == "jobkit.jobs" and started["pid"] == os.getpid()
    fields = attempt.fields
    assert {k: started[k] for k in fields} == fields == {k: succeeded[k] for k in fields}
    assert fields["attempt"] == 1 and fields["priority"] == "normal"
    assert (succeeded["event"], succeeded["level"]) == ("job.succeeded", "info")
    assert succeeded["duration_ms"] == round(attempt.duration_s * 1000, 2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", succeeded["ts"])


def test_job_event_lines_escape_odd_fixed_fields_and_fall_back_for_unusual_ones() -> None:
    handler, sink, events = _json_events()
    odd = _attempt(message_id='m"1\n', actor_name='a%s"b', queue_name="q%d")
    unhashable = _attempt(options={"priority": ["x"]})
    for attempt, args in ((odd, {"k": "v"}), (unhashable, None)):
        attempt.started_at, attempt.latency_ms = 1764525600.25, 5
        events.job_started(attempt, args)
        attempt.duration_s = 0.0125
        events.job_succeeded(attempt)
    sink.flush_now()
    lines = handler.stream.getvalue().splitlines()
    started, succeeded, odd_started, odd_succeeded = (json.loads(line) for line in lines)
    assert (
        {k: started[k] for k in odd.fields} == odd.fields == {k: succeeded[k] for k in odd.fields}
    )
    assert odd.fields["actor"] == 'a%s"b' and odd.fields["message_id"] == 'm"1\n'
    assert (started["event"], started["queue_latency_ms"], started["args"]) == (
        "job.started",
        5,
        {"k": "v"},
    )
    assert started["ts"] == "2025-11-30T18:00:00.250000Z"
    assert (succeeded["event"], succeeded["duration_ms"]) == ("job.succeeded", 12.5)
    assert succeeded["ts"] == "2025-11-30T18:00:00.262500Z"
    assert odd_started["priority"] == ["x"] and odd_started["args"] is None
    assert odd_succeeded["duration_ms"] == 12.5 and odd_succeeded["level"] == "info"


def test_job_events_come_out_once_each_in_the_order_they_were_handed_over() -> None:
    handler, sink, events = _json_events()
    running, quick, slow = _attempt(), _attempt(), _attempt()
    for attempt in (running, quick, slow):
        events.job_started(attempt, {})
    sink.write_json(b'{"message_id":null,"event":"rendered at once"}')
    quick.finish()
    events.job_succeeded(quick)
    slow.finish()
    sink.flush_now()  # slow ended, but its job.succeeded is not handed over yet: none for it
    slow.duration_s = 2.0
    events.job_succeeded(slow)
    sink.flush_now()
    lines = [json.loads(line) for line in handler.stream.getvalue().splitlines()]
    assert [(line["message_id"], line["event"]) for line in lines] == [
        (running.message_id, "job.started"),
        (quick.message_id, "job.started"),
        (slow.message_id, "job.started"),
        (None, "rendered at once"),
        (quick.message_id, "job.succeeded"),
        (slow.message_id, "job.succeeded"),
    ]
    assert lines[-1]["duration_ms"] == 2000.0


def test_a_flush_writes_whole_lines_in_chunks_and_an_over_long_line_whole() -> None:
    writes: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            writes.append(text)

        def flush(self) -> None:
            pass

    sink = LineBuffer(logging.StreamHandler(Stream()), interval=3600, max_lines=10**6)
    expected = [f"line {i:05d} " + "x" * 40 for i in range(2000)]
    expected += ["L" * (2 * CHUNK_CHARS), "tail \udc80"]
    for line in expected:
        sink.write(line + "\n")
    sink.flush_now()
    assert len(writes) > 2 and all(write.endswith("\n") for write in writes)
    assert all(len(write) <= CHUNK_CHARS for write in writes if "L" not in write)
    # A lone surrogate cannot be written as UTF-8: it is written escaped.
    assert "".join(writes).splitlines() == [*expected[:-1], "tail \\udc80"]


def test_an_attempt_is_timed_once_for_logs_and_metrics_and_forgotten_at_its_ack() -> None:
    from dramatiq import Message
    from dramatiq.broker import MessageProxy

    from middleware.deliveries import ATTEMPTS

    message = Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={"retries": 1})
    delivery = MessageProxy(message)
    attempt = ATTEMPTS.begin(delivery)
    assert ATTEMPTS.begin(delivery) is attempt  # the second middleware reads the same record
    assert attempt.message is message and attempt.labels == ("job", "q")
    assert attempt.fields["attempt"] == 2 and attempt.duration_s is None
    assert ATTEMPTS.get(message.copy()) is attempt  # Retries' copy of it: the same message id
    assert attempt.finish() == attempt.finish() == attempt.duration_s >= 0
    assert ATTEMPTS.end(delivery) is attempt and ATTEMPTS.get(delivery) is None
    again = MessageProxy(Message.decode(message.encode()))  # delivered again: timed anew
    assert ATTEMPTS.begin(again) is not attempt
    assert ATTEMPTS.end(again) is not None
    assert all(running.delivery is not again for running in ATTEMPTS.running())


def test_a_threads_unfinished_line_waits_for_its_newline() -> None:
    """print() writes text, then newline: nothing another thread writes may land between."""
    writes: list[str] = []

    class Pipe:
        def write(self, text: str) -> None:
            writes.append(text)

        def flush(self) -> None:
            writes.append("<flush>")

    stream = SerializedStream(Pipe(), threading.RLock())
    stream.write("printed")
    other = threading.Thread(target=stream.write, args=('{"event":"job.succeeded"}\n',))
    other.start()
    other.join()
    stream.write("\n")
    stream.write("a\nb")
    assert writes == ['{"event":"job.succeeded"}\n', "printed\n", "a\n"]
    stream.flush()
    assert writes[-2:] == ["b", "<flush>"]
    stream.write("x" * SerializedStream.HOLD_CHARS)  # too long to hold
    assert writes[-1] == "x" * SerializedStream.HOLD_CHARS
    stream.write("left at exit")
    stream.flush_all()
    assert writes[-2:] == ["left at exit", "<flush>"]


# ---------------------------------------------------------------- under the real CLI

JOBS = 100


def _send(broker: Broker) -> dict[int, str]:
    """Send 100 jobs: 10 always fail, 9 fail once; returns the kind of each index."""
    actors = declare_logged(broker)
    kinds = {}
    for n in range(JOBS):
        if n % 10 == 9:
            actors.doomed.send(n, api_key=SECRET)
            kinds[n] = "doomed"
        else:
            actors.flaky.send(n, SECRET, FORGED if n % 7 == 0 else "plain", fail_first=n % 10 == 0)
            kinds[n] = "flaky-once" if n % 10 == 0 else "ok"
    return kinds


def _events(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def test_jobkit_worker_prints_only_json_one_start_per_attempt_one_end_per_job(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    _run_and_check(real_broker, real_broker_kind, "jobkit worker", tmp_path)


def test_stock_dramatiq_with_skip_logging_prints_only_json(
    redis_broker_kind: str, tmp_path: Path
) -> None:
    from tests.conftest import flush, make_broker

    broker = make_broker(redis_broker_kind)
    flush(broker)
    try:
        _run_and_check(broker, redis_broker_kind, "dramatiq --skip-logging", tmp_path)
    finally:
        flush(broker)
        broker.close()


def test_long_prints_from_many_threads_neither_hang_the_worker_nor_break_lines(
    tmp_path: Path,
) -> None:
    """Dramatiq frames each write to its log pipe; concurrent writers must not split frames."""
    from tests.conftest import flush, make_broker
    from tests.support.logged import NOISE

    broker = make_broker("redis")
    flush(broker)
    output = tmp_path / "worker.out"
    env = child_env(url_for("redis"), JOBKIT_LOG_FORMAT="json")
    module_args = ["tests.support.logged_worker", "-p", "1", "-t", "8", "-Q", "jobkit-test"]
    workers = start_dramatiq(*module_args, "--skip-logging", env=env, log=output)
    try:
        noisy = declare_logged(broker).noisy
        for n in range(200):
            noisy.send(n)

        def done() -> int:
            return output.read_text(errors="replace").count('"event":"job.succeeded"')

        assert wait_until(lambda: done() >= 200, timeout=90, interval=0.25), done()
    finally:
        stop_process_group(workers)
        flush(broker)
        broker.close()
    text = output.read_text()  # raises if the relayed bytes are not UTF-8: a split frame
    printed, written, events = [], [], []
    for line in text.splitlines():  # print()'s text and newline arrive as one line
        if match := re.fullmatch(rf"stdout (\d+) o{{{NOISE}}}", line):
            printed.append(int(match[1]))
        elif match := re.fullmatch(rf"stderr (\d+) e{{{NOISE}}}", line):
            written.append(int(match[1]))
        else:
            events.append(json.loads(line))
    assert sorted(printed) == list(range(200))
    assert sorted(written) == list(range(200))
    assert sum(e["event"] == "job.succeeded" for e in events) == 200


def _run_and_check(
    real_broker: Broker, real_broker_kind: str, launcher: str, tmp_path: Path
) -> None:
    output = tmp_path / "worker.out"
    env = child_env(
        url_for(real_broker_kind),
        JOBKIT_LOG_FORMAT="json",
        **{MARKERS_ENV: str(tmp_path)},
        **env_for(real_broker_kind),
    )
    module_args = ["tests.support.logged_worker", "-p", "1", "-t", "4", "-Q", "jobkit-test"]
    if launcher == "jobkit worker":
        workers = start_process_group(
            [*jobkit_command(), "worker", *module_args], env=env, log=output, cwd=REPO
        )
    else:
        workers = start_dramatiq(*module_args, "--skip-logging", env=env, log=output)
    kinds = _send(real_broker)
    ids_to_n: dict[str, int] = {}

    def finished() -> bool:
        try:
            events = _events(output.read_text().splitlines())
        except json.JSONDecodeError:
            return False
        ends = [e for e in events if e["event"] in ("job.succeeded", "job.dead_lettered")]
        return len(ends) >= JOBS

    try:
        assert wait_until(finished, timeout=120, interval=0.25), output.read_text()[-3000:]
    finally:
        stop_process_group(workers)

    text = output.read_text()
    assert SECRET not in text
    lines = [line for line in text.splitlines() if line.strip()]
    events = _events(lines)  # raises if any line is not JSON
    assert not any(line.startswith("FORGED") for line in lines)
    jobs = [e for e in events if e.get("logger") == "jobkit.jobs"]
    for event in jobs:
        for field in (
            "ts",
            "level",
            "message_id",
            "actor",
            "queue",
            "priority",
            "attempt",
            "host",
            "pid",
        ):
            assert field in event, (field, event)
        if event["event"] == "job.started":
            ids_to_n[event["message_id"]] = event["args"]["n"]
            assert event["queue_latency_ms"] >= 0
    per_job: dict[str, Counter] = defaultdict(Counter)
    for event in jobs:
        per_job[event["message_id"]][event["event"]] += 1
    assert len(per_job) == JOBS
    for message_id, counts in per_job.items():
        kind = kinds[ids_to_n[message_id]]
        attempts = 1 if kind == "ok" else 2
        assert counts["job.started"] == attempts, (kind, counts)
        assert counts["job.succeeded"] + counts["job.dead_lettered"] == 1, (kind, counts)
        assert counts["job.dead_lettered"] == (kind == "doomed")
        assert counts["job.failed"] == (0 if kind == "ok" else attempts if kind == "doomed" else 1)
        assert counts["job.retry_scheduled"] == (0 if kind == "ok" else 1)
    failed = [e for e in jobs if e["event"] == "job.failed"]
    assert all(e["exc_type"] in ("RuntimeError", "ValueError") and e["exc_message"] for e in failed)
    dead = [e for e in jobs if e["event"] == "job.dead_lettered"]
    assert {e["reason"] for e in dead} == {"retries_exhausted"} and all(
        e["level"] == "error" for e in dead
    )
    inner = [e for e in events if e.get("logger") == "app"]
    assert len(inner) >= 2 * (JOBS - 10)
    assert all(e.get("message_id") in per_job and e.get("actor") == "flaky" for e in inner)
    started = [e for e in jobs if e["event"] == "job.started" and e["actor"] == "flaky"]
    assert all(e["args"]["password"] == REDACTED for e in started)


def test_events_read_as_text_where_jobkit_does_not_own_logging(tmp_path: Path) -> None:
    """An app that runs a Worker itself, logging unconfigured: lines of text, not dicts."""
    script = (
        "import structlog\n"
        "from middleware.log_config import configure_structlog\n"
        "configure_structlog()\n"
        "try:\n"
        "    raise ValueError('nope')\n"
        "except ValueError:\n"
        "    structlog.get_logger('jobkit.jobs').warning(\n"
        "        'job.failed', actor='boom', exc_info=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=child_env("redis://127.0.0.1:6379/15"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert "job.failed" in first and "actor=boom" in first, result.stderr
    assert "{'" not in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: nope")
