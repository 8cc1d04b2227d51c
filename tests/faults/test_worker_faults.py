"""Faults under load, with loss and duplicate accounting (bounded; full with a flag).

Each test sends jobs while a worker group runs them, injects one fault, lets a
second group (or the same, after the broker comes back) finish, and accounts
for every message the broker accepted: lost, duplicated, stuck, dead-lettered.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dramatiq import Broker

from brokers import BrokerBlocked, BrokerUnavailable, build_broker, embedded, queue_depths
from brokers.dead_letter_store import dead_letter_store
from tests.conftest import REDIS_URL, env_for, flush, url_for
from tests.faults.ledger import Accounting, Ledger, account, finished, locate_on_redis
from tests.faults.private_rabbitmq import PrivateRabbitmq
from tests.faults.private_redis import PrivateRedis
from tests.support import job_log
from tests.support.processes import child_env, stop_group, wait_until
from tests.support.recovery import QUEUE, declare_failing, declare_sleepy, start_workers

#: ``JOBKIT_FAULTS_FULL=1`` runs ten times as many jobs through each fault.
JOBS = 2000 if os.environ.get("JOBKIT_FAULTS_FULL") == "1" else 200
WORK_MS = 20
THREADS = 4
#: Dramatiq fetches up to twice its threads ahead.
PREFETCH = 2 * THREADS

pytestmark = pytest.mark.slow


def run_with_fault(
    broker: Broker, url: str, env: dict[str, str], tmp_path: Path,
    fault: Callable[[subprocess.Popen[bytes]], None], *, restart_workers: bool = True,
    on_half_sent: Callable[[], None] = lambda: None,
) -> Accounting:  # fmt: skip
    log_path = tmp_path / "jobs.jsonl"
    env = child_env(
        url, JOBKIT_TEST_JOB_LOG=str(log_path), JOBKIT_HEARTBEAT_TIMEOUT_MS="2000", **env
    )
    sleepy = declare_sleepy(broker)
    ledger = Ledger()
    store = dead_letter_store(broker)

    def workers(name: str) -> subprocess.Popen[bytes]:
        return start_workers(env, tmp_path / f"{name}.log", THREADS)

    def settled() -> bool:
        ends = finished(log_path)
        dead = {r["id"] for r in store.iter()}
        if not all(ends[i] or i in dead for i in ledger.accepted):
            return False
        # Jobs that ended while the broker was down are not acked: the broker puts them
        # back, and the workers run them again once reconnected. Settled means nothing left.
        try:
            (depth,) = (d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)
        except Exception:  # noqa: BLE001 - the broker is still coming back
            return False
        return depth.ready + depth.delayed + (depth.in_flight or 0) == 0

    group = workers("first")
    try:
        for n in range(JOBS):
            if n == JOBS // 2:
                on_half_sent()
            try:
                ledger.accepted.add(sleepy.send(n, WORK_MS).message_id)
            except BrokerUnavailable:  # one clear line; counted, not fatal
                ledger.send_failures += 1
                time.sleep(0.05)
        assert wait_until(lambda: len(finished(log_path)) >= JOBS // 4, 60)
        fault(group)
        if restart_workers:
            stop_group(group, timeout=10)
            group = workers("second")
        assert wait_until(settled, 90), unsettled(broker, ledger, log_path, tmp_path)
    finally:
        stop_group(group, timeout=10)
    result = account(ledger, log_path, broker, QUEUE)
    print(result.summary())
    return result


def unsettled(broker: Broker, ledger: Ledger, log_path: Path, tmp_path: Path) -> str:
    """The failure message when accepted jobs did not settle: where they are, the log's end."""
    ends = finished(log_path)
    dead = {r["id"] for r in dead_letter_store(broker).iter()}
    open_ids = {i for i in ledger.accepted if not ends[i] and i not in dead}
    where = ""
    if hasattr(broker, "client"):
        try:
            where = locate_on_redis(broker, QUEUE, open_ids)
        except Exception as error:  # noqa: BLE001 - a diagnostic must not hide the failure
            where = f"(could not read the key space: {error})"
    log = "".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("*.log")))
    return f"{len(open_ids)} accepted job(s) neither finished nor dead-lettered\n{where}\n{log}"


def test_kill_9_of_a_worker_under_load_loses_nothing(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    def kill_9(group: subprocess.Popen[bytes]) -> None:
        os.killpg(group.pid, signal.SIGKILL)
        group.wait(10)

    result = run_with_fault(
        real_broker, url_for(real_broker_kind), env_for(real_broker_kind), tmp_path, kill_9
    )
    assert result.lost == [] and result.stuck == 0 and result.dead_lettered == 0
    assert result.finished == result.accepted == JOBS
    # Only jobs running (or done but not yet acked) when the worker died run twice.
    assert sum(n - 1 for n in result.duplicated.values()) <= THREADS + PREFETCH


def test_sigterm_under_load_loses_nothing_and_runs_nothing_twice(
    real_broker: Broker, real_broker_kind: str, tmp_path: Path
) -> None:
    def sigterm(group: subprocess.Popen[bytes]) -> None:
        stop_group(group, timeout=20)  # SIGTERM: running jobs finish, fetched ones go back

    result = run_with_fault(
        real_broker, url_for(real_broker_kind), env_for(real_broker_kind), tmp_path, sigterm
    )
    assert result.lost == [] and result.stuck == 0 and result.duplicated == {}
    assert result.finished == result.accepted == JOBS


def test_an_embedded_server_restart_during_processing_loses_nothing(
    home: Path, tmp_path: Path
) -> None:
    url = f"embedded://{home}"
    broker = build_broker(url)
    flush(broker)

    def restart_server(group: subprocess.Popen[bytes]) -> None:
        embedded.stop(home)  # a clean shutdown writes the AOF
        embedded.ensure_server(home)

    try:
        result = run_with_fault(broker, url, {}, tmp_path, restart_server, restart_workers=False)
    finally:
        broker.close()
    assert result.lost == [] and result.stuck == 0
    assert result.finished == result.accepted == JOBS
    assert sum(n - 1 for n in result.duplicated.values()) <= THREADS + PREFETCH


def test_a_stalled_worker_s_jobs_run_elsewhere_and_duplicates_are_bounded(
    redis_broker: Broker, redis_broker_kind: str, tmp_path: Path
) -> None:
    """``kill -STOP`` past the heartbeat timeout, then ``-CONT``: both ran some jobs."""
    log_path = tmp_path / "jobs.jsonl"
    env = child_env(
        url_for(redis_broker_kind),
        JOBKIT_TEST_JOB_LOG=str(log_path),
        JOBKIT_HEARTBEAT_TIMEOUT_MS="2000",
    )
    sleepy = declare_sleepy(redis_broker)
    ledger = Ledger()
    groups = []

    def workers(name: str) -> subprocess.Popen[bytes]:
        group = start_workers(env, tmp_path / f"{name}.log", THREADS)
        groups.append(group)
        return group

    try:
        stalled = workers("stalled")
        ledger.accepted.update(sleepy.send(n, WORK_MS).message_id for n in range(JOBS))
        assert wait_until(lambda: len(finished(log_path)) >= JOBS // 4, 60)
        os.killpg(stalled.pid, signal.SIGSTOP)
        workers("healthy")
        # Past the heartbeat timeout, the healthy group takes over the stalled one's jobs.
        assert wait_until(lambda: len(finished(log_path)) >= JOBS, 60)
        os.killpg(stalled.pid, signal.SIGCONT)
        time.sleep(2)  # the stalled group finishes what it held
    finally:
        for group in groups:
            os.killpg(group.pid, signal.SIGCONT)
            stop_group(group, timeout=10)
    result = account(ledger, log_path, redis_broker, QUEUE)
    print(result.summary())
    assert result.lost == [] and result.stuck == 0
    assert result.finished == result.accepted == JOBS
    assert sum(n - 1 for n in result.duplicated.values()) <= THREADS + PREFETCH


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_killed_during_enqueue_and_processing_loses_nothing_it_accepted(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    broker = build_broker(private_redis.url)
    sent_half = threading.Event()

    def crash_and_restart(group: subprocess.Popen[bytes]) -> None:
        private_redis.kill()
        time.sleep(1)
        private_redis.start()

    def restart_while_sending() -> None:
        sent_half.wait(60)
        crash_and_restart(None)  # type: ignore[arg-type]

    # One restart while the app sends, one while the workers run.
    restarter = threading.Thread(target=restart_while_sending, daemon=True)
    restarter.start()
    try:
        result = run_with_fault(
            broker, private_redis.url, {}, tmp_path, crash_and_restart,
            restart_workers=False, on_half_sent=sent_half.set,
        )  # fmt: skip
    finally:
        restarter.join(30)
        broker.close()
    assert result.lost == [] and result.stuck == 0
    assert result.finished == result.accepted and result.accepted + result.send_failures == JOBS
    assert sum(n - 1 for n in result.duplicated.values()) <= THREADS + PREFETCH


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbitmq]:
    node = PrivateRabbitmq(Path(tempfile.mkdtemp(prefix="jk-mq-", dir="/tmp")))
    node.start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.directory, ignore_errors=True)


@pytest.mark.parametrize("fault", ["stop_app", "kill -9"])
def test_rabbitmq_stopped_or_killed_during_processing_loses_nothing_it_accepted(
    private_rabbitmq: PrivateRabbitmq, fault: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("JOBKIT_STATE_URL", REDIS_URL)  # dead letters and counts
    broker = build_broker(private_rabbitmq.url)
    broken_at: list[float] = []

    def break_the_broker(group: subprocess.Popen[bytes]) -> None:
        broken_at.append(time.time())
        if fault == "stop_app":
            private_rabbitmq.ctl("stop_app")
            time.sleep(1)
            private_rabbitmq.ctl("start_app")
            private_rabbitmq.wait_until_serving()
        else:
            private_rabbitmq.kill()
            broken_at[-1] = private_rabbitmq.killed_at
            private_rabbitmq.start()

    try:
        result = run_with_fault(
            broker, private_rabbitmq.url, {"JOBKIT_STATE_URL": REDIS_URL}, tmp_path,
            break_the_broker, restart_workers=False,
        )  # fmt: skip
    finally:
        broker.close()
    assert result.lost == [] and result.stuck == 0
    assert result.finished == result.accepted == JOBS
    if fault == "stop_app":
        assert sum(n - 1 for n in result.duplicated.values()) <= THREADS + PREFETCH
    else:
        # RabbitMQ writes the acks of persistent messages to disk lazily: after a hard
        # kill, jobs acked shortly before it come back. Beyond those, only jobs the
        # workers held when the broker died (running or prefetched) may run twice.
        first_end = {}
        for event in job_log.read(tmp_path / "jobs.jsonl"):
            if event["event"] == "end":
                first_end.setdefault(event["id"], event["t"])
        held = [i for i in result.duplicated if first_end[i] > broken_at[0]]
        assert len(held) <= THREADS + PREFETCH, result.summary()


def test_a_publish_blocked_by_a_memory_alarm_fails_within_the_timeout(
    private_rabbitmq: PrivateRabbitmq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBKIT_STATE_URL", REDIS_URL)
    broker = build_broker(f"{private_rabbitmq.url}?blocked_connection_timeout=2")
    try:
        sleepy = declare_sleepy(broker)
        sleepy.send(1, 0)
        private_rabbitmq.ctl("set_vm_memory_high_watermark", "0.0000001")
        time.sleep(3)  # the node raises its memory alarm
        started = time.monotonic()
        with pytest.raises(BrokerBlocked, match="a memory or disk alarm"):
            sleepy.send(2, 0)
        elapsed = time.monotonic() - started
        print(f"the blocked send failed after {elapsed:.1f} s")
        assert elapsed < 10  # one timeout, not Dramatiq's six attempts
        private_rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
        time.sleep(3)
        sleepy.send(3, 0)
        (depth,) = (d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)
        # What was accepted is all there; the unconfirmed one may have arrived as well.
        assert depth.ready in (2, 3)
    finally:
        broker.close()


@pytest.mark.parametrize("fault", ["redis killed", "rabbitmq killed"])
def test_a_job_failing_while_the_broker_is_down_is_retried_once_it_is_back(
    fault: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dramatiq's Retries loses the next attempt when its send fails (dramatiq#545).

    On Redis the worker then acked the failed delivery once Redis was back: the job
    was gone. On RabbitMQ the dead connection already handed the delivery back.
    """
    kind = fault.split()[0]
    server = request.getfixturevalue("private_redis" if kind == "redis" else "private_rabbitmq")
    env = {} if kind == "redis" else {"JOBKIT_STATE_URL": REDIS_URL}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = server.url
    block, fail = tmp_path / "block", tmp_path / "fail"
    block.touch()
    fail.touch()
    log_path = tmp_path / "jobs.jsonl"
    broker = build_broker(url)
    worker_env = child_env(
        url, JOBKIT_TEST_JOB_LOG=str(log_path), JOBKIT_HEARTBEAT_TIMEOUT_MS="2000",
        JOBKIT_TEST_BLOCK_FLAG=str(block), JOBKIT_TEST_FAIL_FLAG=str(fail), **env,
    )  # fmt: skip
    group = start_workers(worker_env, tmp_path / "worker.log", THREADS)
    try:
        message_id = declare_failing(broker).send(1).message_id

        def events(kind: str, failed: bool | None = None) -> list[dict[str, object]]:
            return [
                e for e in job_log.read(log_path)
                if e["id"] == message_id and e["event"] == kind
                and (failed is None or e.get("failed") is failed)
            ]  # fmt: skip

        assert wait_until(lambda: events("start"), 60)
        server.kill()
        block.unlink()  # the job fails now, with the broker gone
        assert wait_until(lambda: events("end", failed=True), 30)
        time.sleep(3)  # Retries tries to send the next attempt, and cannot
        fail.unlink()
        server.start()
        # The next attempt runs and succeeds; nothing is left over.
        assert wait_until(lambda: events("end", failed=False), 60), (
            tmp_path / "worker.log"
        ).read_text()[-3000:]
        dead = {r["id"] for r in dead_letter_store(broker).iter()}
        assert message_id not in dead

        def drained() -> bool:
            try:
                (depth,) = (d for d in queue_depths(broker, {QUEUE}) if d.queue == QUEUE)
            except Exception:  # noqa: BLE001 - still reconnecting
                return False
            return depth.ready + depth.delayed + (depth.in_flight or 0) == 0

        assert wait_until(drained, 30)
    finally:
        stop_group(group, timeout=10)
        broker.close()
