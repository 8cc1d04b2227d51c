"""`jobkit jobs`: list, show, wait and cancel by a job's record, on every real broker.

Jobs run in a worker inside the test process, on the test broker; the commands run
as the user runs them, in a process of their own on the same broker (the default app,
``actors``: records are read from the state Redis whoever declared the actors). An
unknown id is not found (exit NOT_FOUND), a malformed one a usage error.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from unittest.mock import Mock

import dramatiq
import pytest
from dramatiq import Broker, Message

from brokers.job_record_store import JobRecordStore, job_records
from jobkit import exit_codes
from jobkit.output import SHORT_ID
from middleware.job_records import report_progress
from tests.conftest import EMBEDDED_URL, RABBITMQ_URL, env_for, url_for
from tests.support.cooperative import declare_patient
from tests.support.processes import child_env, jobkit_command, run_jobkit, wait_until, worker
from tests.support.shipped import QUEUE

# Ids that share prefixes: "abcd" names two jobs, "abcd1" one.
ID_1 = "abcd1111-0000-4000-8000-000000000001"
ID_2 = "abcd2222-0000-4000-8000-000000000002"
UNKNOWN = "99999999-0000-4000-8000-000000000009"
RECORD_KEYS = {
    "id", "state", "actor", "queue", "priority", "args", "enqueued_at", "state_at", "due_at",
    "history", "attempts", "progress", "has_result", "result_error", "dead_letter", "reason",
    "replayed_from", "replayed_as", "group", "unique_key", "cancel_requested_at", "result",
}  # fmt: skip


@dataclass
class Jobs:
    """The test broker, its records, and actors on the test queue that count their runs."""

    broker: Broker
    kind: str
    records: JobRecordStore
    runs: Counter[str]
    keep: dramatiq.Actor  # store_results: returns {"width": width}, reports progress
    flaky: dramatiq.Actor  # fails its first attempt, then returns "ok" (kept)
    fails: dramatiq.Actor  # always fails, no retries: dead-lettered
    spin: dramatiq.Actor  # runs until cancelled (at most 60 s)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``jobkit ARGS`` once every record this process sent is written."""
        assert self.records.flush(10)
        return run_jobkit(*args, env=child_env(url_for(self.kind), **env_for(self.kind), **env))

    def finished(self, message: Message, timeout: float = 30) -> None:
        assert wait_until(lambda: (r := self.records.get(message.message_id)) and r.finished,
                          timeout), self.records.get(message.message_id)  # fmt: skip


@pytest.fixture
def jobs(real_broker: Broker, real_broker_kind: str) -> Jobs:
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    def count() -> str:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        assert message is not None
        with lock:
            runs[message.message_id] += 1
            return message.message_id

    def keep(width: int, password: str = "") -> dict[str, int]:
        count()
        report_progress(0.5, "half way")
        return {"width": width}

    def flaky() -> str:
        if runs[count()] == 1:
            raise ConnectionError("the first try fails")
        return "ok"

    def fails(n: int) -> None:
        count()
        raise ValueError(f"cannot handle {n}")

    def spin() -> None:
        count()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # interruptible between sleeps
            time.sleep(0.01)

    real_broker.add_middleware(dramatiq.middleware.CurrentMessage())
    options: dict[str, Any] = {"broker": real_broker, "queue_name": QUEUE}
    backoff = {"min_backoff": 10, "max_backoff": 50}
    return Jobs(
        broker=real_broker,
        kind=real_broker_kind,
        records=job_records(real_broker),
        runs=runs,
        keep=dramatiq.actor(keep, store_results=True, max_retries=0, **options),
        flaky=dramatiq.actor(flaky, store_results=True, max_retries=1, **backoff, **options),
        fails=dramatiq.actor(fails, max_retries=0, **options),
        spin=dramatiq.actor(spin, max_retries=0, **options),
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobkit: error: "), result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    return lines[0]


def listed(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert isinstance(found, list)
    return found


# ---------------------------------------------------------------- send, show


def test_a_job_sent_from_the_shell_shows_as_queued(jobs: Jobs) -> None:
    sent = jobs.cli("send", "ping")
    assert sent.returncode == 0, sent.stderr
    job_id = re.search(r"message id ([0-9a-f-]{36})", sent.stdout).group(1)  # type: ignore[union-attr]
    # The sender wrote the record before it exited: nobody has flushed anything since.
    shown = run_jobkit("jobs", "show", job_id, "--json", env=child_env(
        url_for(jobs.kind), **env_for(jobs.kind)))  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert set(record) == RECORD_KEYS
    assert record["id"] == job_id and record["state"] == "queued"
    assert record["actor"] == "ping" and record["queue"] == "default"
    assert [change["state"] for change in record["history"]] == ["queued"]
    assert record["attempts"] == [] and record["result"] is None
    human = jobs.cli("jobs", "show", job_id[:SHORT_ID])
    assert human.returncode == 0, human.stderr
    assert f"id: {job_id}\nstate: queued since " in human.stdout
    assert "attempts: none" in human.stdout


def test_show_gives_every_state_in_order_and_every_attempt(jobs: Jobs) -> None:
    retried = jobs.flaky.send()
    failed = jobs.fails.send(7)
    kept = jobs.keep.send_with_options(args=(640,), kwargs={"password": "hunter2"})
    with worker(jobs.broker, threads=2, queues={QUEUE}):
        for message in (retried, failed, kept):
            jobs.finished(message)

    shown = jobs.cli("jobs", "show", retried.message_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert [c["state"] for c in record["history"]] == [
        "queued", "running", "retrying", "queued", "running", "succeeded"]  # fmt: skip
    assert record["history"][2]["due_at"] is not None
    first, second = record["attempts"]
    assert (first["number"], first["outcome"]) == (1, "failed")
    assert (first["error_type"], first["error"]) == ("ConnectionError", "the first try fails")
    assert "in flaky" in first["traceback"]
    assert (second["number"], second["outcome"], second["error"]) == (2, "succeeded", None)
    assert second["duration_ms"] >= 0 and second["pid"] > 0 and second["host"]
    assert record["result"] == "ok"

    human = jobs.cli("jobs", "show", retried.message_id).stdout
    states = re.findall(r"^  (\w+) +\d{4}-", human, re.M)
    assert states == ["queued", "running", "retrying", "queued", "running", "succeeded"], human
    assert re.search(r"^  retrying +\S+  due \d{4}-", human, re.M), human
    attempt = r"^  #1  failed +started \S+  [\d.]+ m?s  on \S+:\d+\n      ConnectionError: "
    assert re.search(attempt + "the first try fails$", human, re.M), human
    assert re.search(r"^  #2  succeeded +started ", human, re.M), human
    assert 'result: "ok"' in human

    human = jobs.cli("jobs", "show", failed.message_id).stdout
    assert f"dead letter: {failed.message_id} (retries_exhausted)" in human
    assert re.search(r"^  failed +\S+  \(retries_exhausted\)$", human, re.M), human
    assert "ValueError: cannot handle 7" in human

    human = jobs.cli("jobs", "show", kept.message_id).stdout
    assert 'args: width=640, password="[redacted]"' in human, human
    assert "hunter2" not in human
    assert "progress: 50% half way (at " in human
    assert 'result: {"width": 640}' in human


# ---------------------------------------------------------------- list


def test_list_filters_by_state_actor_queue_and_time(jobs: Jobs) -> None:
    kept = jobs.keep.send(1)
    failed = jobs.fails.send(2)
    with worker(jobs.broker, threads=2, queues={QUEUE}):
        jobs.finished(kept)
        jobs.finished(failed)
    delayed = jobs.keep.send_with_options(args=(3,), delay=600_000)

    everything = listed(jobs.cli("jobs", "list", "--json"))
    assert {job["id"] for job in everything} == {
        kept.message_id, failed.message_id, delayed.message_id}  # fmt: skip
    assert all(set(job) == RECORD_KEYS for job in everything)
    assert everything[0]["id"] == delayed.message_id  # the most recently changed first
    assert everything[0]["due_at"] is not None

    def ids(*filters: str) -> set[str]:
        return {job["id"] for job in listed(jobs.cli("jobs", "list", "--json", *filters))}

    assert ids("--state", "failed") == {failed.message_id}
    assert ids("--state", "succeeded,failed") == {kept.message_id, failed.message_id}
    assert ids("--state", "succeeded", "--state", "delayed") == {
        kept.message_id, delayed.message_id}  # fmt: skip
    assert ids("--actor", "keep") == {kept.message_id, delayed.message_id}
    assert ids("--actor", "keep", "--state", "delayed") == {delayed.message_id}
    assert ids("--queue", QUEUE, "--actor", "fails") == {failed.message_id}
    assert ids("--since", "1h") == ids()
    assert ids("--since", "2999-01-01T00:00") == set()
    assert ids("--limit", "1") == {delayed.message_id}

    table = jobs.cli("jobs", "list", "--state", "delayed,failed")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if QUEUE in line]
    assert len(rows) == 2, table.stdout
    assert re.search(r" delayed .* 0 .* \d+[sm] ago .* due in \d+m ", rows[0]), table.stdout
    assert re.search(r" failed .* 1 .* \d+[sm] ago .* retries_exhausted ", rows[1]), table.stdout

    for filters in (["--queue", "default"], ["--actor", "nobody", "--state", "running"]):
        empty = jobs.cli("jobs", "list", *filters)
        assert (empty.returncode, empty.stdout) == (0, "no jobs match\n"), empty.stderr
        assert listed(jobs.cli("jobs", "list", "--json", *filters)) == []


def test_an_empty_store_lists_one_line_or_an_empty_json_array(jobs: Jobs) -> None:
    empty = jobs.cli("jobs", "list")
    assert (empty.returncode, empty.stdout) == (0, "no jobs\n"), empty.stderr
    assert listed(jobs.cli("jobs", "list", "--json")) == []


def test_the_list_does_not_walk_index_entries_of_expired_records(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A finished record expires JOBKIT_JOB_TTL after it finished; its index entries stay
    # until a later job of the same index finishes: never, for an actor that stopped
    # running. Listing must not page through them (it read them 50 at a time, each page
    # from an offset, before finding the live ones).
    kept = jobs.keep.send(1)
    with worker(jobs.broker, threads=1, queues={QUEUE}):
        jobs.finished(kept)
    records = jobs.records
    before_ttl = int(time.time() * 1000) - records.ttl_ms - 60_000
    stale = {f"e{n:05d}-0000-4000-8000-expired": before_ttl - n for n in range(5_000)}
    for key in ("jobkit:jobs:s:succeeded", "jobkit:jobs:a:keep:succeeded"):
        records.client.zadd(key, stale)
    reads = Mock(wraps=records._records)
    monkeypatch.setattr(records, "_records", reads)
    assert [job.id for job in records.find(limit=20)] == [kept.message_id]
    assert [job.id for job in records.find(actor="keep", limit=20)] == [kept.message_id]
    assert reads.call_count == 2  # one page each
    assert [job["id"] for job in listed(jobs.cli("jobs", "list", "--json"))] == [kept.message_id]


@pytest.mark.parametrize("columns", [80, 120])
def test_the_list_fits_the_terminal_and_its_ids_are_taken_back(jobs: Jobs, columns: int) -> None:
    sent = [jobs.fails.send(n) for n in range(3)]
    sent.append(jobs.keep.send_with_options(args=(1,), delay=600_000))
    with worker(jobs.broker, threads=2, queues={QUEUE}):
        for message in sent[:3]:
            jobs.finished(message)
    table = jobs.cli("jobs", "list", COLUMNS=str(columns))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns, table.stdout
    for header in ("id", "state", "actor", "attempts", "changed", "details"):
        assert re.search(rf"\b{header}\b", table.stdout), table.stdout
    if columns >= 120:
        assert all(message.message_id in table.stdout for message in sent), table.stdout
        return
    # A row's first line starts with its id (after a border, if the table has them).
    shown = re.findall(r"^[│ ]*(\S+) +(?:failed|delayed) ", table.stdout, re.M)
    assert len(shown) == 4, table.stdout
    for prefix in shown:
        assert len(prefix) == SHORT_ID and "…" not in prefix
        result = jobs.cli("jobs", "show", prefix, COLUMNS="80")
        assert result.returncode == 0, result.stderr
        assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
        assert re.search(rf"^id: {prefix}[0-9a-f-]{{28}}$", result.stdout, re.M), result.stdout


# ---------------------------------------------------------------- wait


def test_wait_prints_the_result_once_the_job_succeeds(jobs: Jobs) -> None:
    kept = jobs.keep.send(640)
    assert jobs.records.flush(10)
    env = child_env(url_for(jobs.kind), **env_for(jobs.kind))
    # Waiting before any worker runs: it returns once the job has run.
    waiting = subprocess.Popen(
        [*jobkit_command(), "jobs", "wait", kept.message_id, "--timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert waiting.poll() is None  # no worker runs yet: nothing to return
        with worker(jobs.broker, threads=1, queues={QUEUE}):
            stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr
    assert json.loads(stdout) == {"width": 640} and stderr == ""

    as_json = jobs.cli("jobs", "wait", kept.message_id[:SHORT_ID], "--json")
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert record["state"] == "succeeded" and record["result"] == {"width": 640}


def test_wait_says_how_a_job_failed_with_its_own_exit_code(jobs: Jobs) -> None:
    failed = jobs.fails.send(7)
    with worker(jobs.broker, threads=1, queues={QUEUE}):
        jobs.finished(failed)
    result = jobs.cli("jobs", "wait", failed.message_id)
    assert result.returncode == exit_codes.JOB_FAILED, result.stderr
    assert result.stdout == ""
    assert one_error_line(result) == (
        f"jobkit: error: job {failed.message_id} failed (retries_exhausted): ValueError: "
        f"cannot handle 7; dead letter {failed.message_id}"
    )
    as_json = jobs.cli("jobs", "wait", failed.message_id, "--json")
    assert as_json.returncode == exit_codes.JOB_FAILED
    record = json.loads(as_json.stdout)
    assert record["state"] == "failed" and record["dead_letter"] == failed.message_id


def test_wait_times_out_with_its_own_exit_code(jobs: Jobs) -> None:
    delayed = jobs.keep.send_with_options(args=(1,), delay=600_000)
    result = jobs.cli("jobs", "wait", delayed.message_id, "--timeout", "0.2")
    assert result.returncode == exit_codes.TIMED_OUT, result.stderr
    assert one_error_line(result) == (
        f"jobkit: error: job {delayed.message_id} is still delayed after 0.2 s"
    )
    assert result.stdout == ""
    as_json = jobs.cli("jobs", "wait", delayed.message_id, "--timeout", "0", "--json")
    assert as_json.returncode == exit_codes.TIMED_OUT
    assert json.loads(as_json.stdout)["state"] == "delayed"


# ---------------------------------------------------------------- cancel


def test_a_cancelled_queued_job_never_runs(jobs: Jobs) -> None:
    done = jobs.keep.send(2)
    with worker(jobs.broker, threads=1, queues={QUEUE}):
        jobs.finished(done)
    queued = jobs.keep.send(3)
    after = jobs.keep.send(4)  # taken after it by the one worker thread below
    result = jobs.cli("jobs", "cancel", queued.message_id, done.message_id[:SHORT_ID], UNKNOWN)
    assert result.returncode == exit_codes.NOT_FOUND, result.stderr
    assert result.stdout.splitlines() == [
        f"{queued.message_id}: cancelled (it was queued); it will never run",
        f"{done.message_id}: already finished (succeeded); nothing changed",
        f"{UNKNOWN}: not found: no job has this id (`jobkit jobs list` shows them)",
    ]
    with worker(jobs.broker, threads=1, queues={QUEUE}):
        jobs.finished(after)
        assert jobs.records.wait(after.message_id, timeout=30) == {"width": 4}
    assert jobs.runs[queued.message_id] == 0 and jobs.runs[done.message_id] == 1
    record = jobs.records.show(queued.message_id)
    assert record.state == "cancelled" and record.attempts == []
    assert [change.state for change in record.history] == ["queued", "cancelled"]

    again = jobs.cli("jobs", "cancel", queued.message_id, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == [
        {"id": queued.message_id, "outcome": "finished", "state": "cancelled"}]  # fmt: skip
    waited = jobs.cli("jobs", "wait", queued.message_id)
    assert waited.returncode == exit_codes.JOB_FAILED
    assert one_error_line(waited) == f"jobkit: error: job {queued.message_id} was cancelled"


def test_a_cancelled_running_job_is_interrupted(jobs: Jobs) -> None:
    running = jobs.spin.send()
    with worker(jobs.broker, threads=1, queues={QUEUE}):
        assert wait_until(lambda: getattr(jobs.records.get(running.message_id), "state", None)
                          == "running", 30)  # fmt: skip
        result = jobs.cli("jobs", "cancel", running.message_id, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [
            {"id": running.message_id, "outcome": "cancelling", "state": None}]  # fmt: skip
        waited = jobs.cli("jobs", "wait", running.message_id, "--timeout", "30")
    assert waited.returncode == exit_codes.JOB_FAILED, waited.stderr
    assert one_error_line(waited) == f"jobkit: error: job {running.message_id} was cancelled"
    (attempt,) = jobs.records.show(running.message_id).attempts
    assert attempt.outcome == "cancelled"


def test_a_cooperative_running_job_is_told_and_ends_cancelled(jobs: Jobs) -> None:
    patient = declare_patient(jobs.broker)
    running = patient.send()
    with worker(jobs.broker, threads=1, queues={QUEUE}):
        assert wait_until(lambda: getattr(jobs.records.get(running.message_id), "state", None)
                          == "running", 30)  # fmt: skip
        app = ("--app", "tests.support.records_app")
        result = jobs.cli(*app, "jobs", "cancel", running.message_id[:SHORT_ID])
        assert result.returncode == 0, result.stderr
        assert result.stdout == (
            f"{running.message_id}: cancelling: it is running, and is told to stop "
            "(its actor is cooperative)\n"
        )
        waited = jobs.cli(*app, "jobs", "wait", running.message_id, "--timeout", "30")
    assert waited.returncode == exit_codes.JOB_FAILED, waited.stderr
    assert one_error_line(waited) == f"jobkit: error: job {running.message_id} was cancelled"
    record = jobs.records.show(running.message_id)
    assert [change.state for change in record.history] == ["queued", "running", "cancelled"]
    assert record.attempts[0].outcome == "cancelled" and record.cancel_requested_at


# ---------------------------------------------------------------- ids


def test_unknown_and_ambiguous_ids_are_one_line(jobs: Jobs) -> None:
    for job_id in (ID_1, ID_2):
        jobs.broker.enqueue(Message(QUEUE, "keep", (1,), {}, {}, message_id=job_id))
    for action in (["show"], ["wait", "--timeout", "0"], ["cancel"]):
        unknown = jobs.cli("jobs", *action, UNKNOWN[:8])
        assert unknown.returncode == exit_codes.NOT_FOUND, unknown.stderr
        if action == ["cancel"]:
            assert unknown.stdout.startswith(f"{UNKNOWN[:8]}: not found: no job has this id")
        else:
            assert one_error_line(unknown) == (
                f"jobkit: error: no job with id starting '{UNKNOWN[:8]}'; "
                "`jobkit jobs list` shows them"
            )
        # cancel: with a good id before it, to show that nothing is cancelled.
        ambiguous = jobs.cli("jobs", *action, *([ID_1] if action == ["cancel"] else []), "abcd")
        assert ambiguous.returncode == exit_codes.ERROR, ambiguous.stderr
        assert one_error_line(ambiguous).startswith(
            f"jobkit: error: 2 jobs have ids starting 'abcd' ({ID_1}, {ID_2}); type more"
        )
        assert ambiguous.stdout == ""
    # The ambiguous id stopped the cancel before anything was cancelled.
    assert {jobs.records.show(job_id).state for job_id in (ID_1, ID_2)} == {"queued"}
    shown = jobs.cli("jobs", "show", "abcd2", "--json")
    assert json.loads(shown.stdout)["id"] == ID_2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["show", "abc"], "ID: must be an id or its first 4 or more characters, got 'abc'"),
        (["show", "abcd efgh"], "got 'abcd efgh' (ids are letters, digits and - _ . :)"),
        (["wait", "abcd\x1befgh"], "ID: must be an id or its first 4 or more characters"),
        (["cancel", "abcd", "x" * 201], "ID: must be an id of at most 200 characters, got 201"),
        (["wait", "abcd", "--timeout", "-1"], "--timeout: must be a number of seconds >= 0"),
        (["wait", "abcd", "--timeout", "nan"], "--timeout: must be a number of seconds >= 0"),
        (["list", "--state", "done"], "--state: must be one or more of queued, delayed, "),
        (["list", "--state", "failed,"], "--state: must be one or more of"),
        (["list", "--limit", "0"], "--limit: must be a whole number >= 1, got '0'"),
        (["list", "--since", "soon"], "--since: must be an age (30m"),
        (["list", "--actor", " "], "--actor: must be a name, not blank"),
        (["cancel"], "the following arguments are required: ID"),
    ],
)
def test_a_malformed_option_or_id_is_a_usage_error(args: list[str], expected: str) -> None:
    result = run_jobkit("jobs", *args, env=child_env(EMBEDDED_URL))
    assert result.returncode == exit_codes.USAGE, result.stderr
    line = one_error_line(result)
    assert expected in line
    assert line.endswith(f"(see jobkit jobs {args[0]} --help)"), line
    assert result.stdout == ""


# ---------------------------------------------------------------- no records


def test_without_records_the_commands_say_so_in_one_line(real_broker_kind: str) -> None:
    env = child_env(url_for(real_broker_kind), **env_for(real_broker_kind), JOBKIT_JOB_RECORDS="0")
    result = run_jobkit("jobs", "list", env=env)
    assert result.returncode == exit_codes.ERROR, result.stderr
    assert one_error_line(result) == (
        "jobkit: error: no job records: job records are off (JOBKIT_JOB_RECORDS=0)"
    )


def test_rabbitmq_without_a_state_store_says_what_to_set() -> None:
    env = child_env(RABBITMQ_URL)
    env.pop("JOBKIT_STATE_URL", None)
    result = run_jobkit("jobs", "show", UNKNOWN, env=env)
    assert result.returncode == exit_codes.ERROR, result.stderr
    line = one_error_line(result)
    assert line.startswith("jobkit: error: no job records: PriorityRabbitmqBroker keeps no ")
    assert "set JOBKIT_STATE_URL to a Redis URL" in line and "job records" in line
