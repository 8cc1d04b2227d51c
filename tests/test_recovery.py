"""Recovery from dead workers: a SIGKILLed worker's jobs run again, in bounded time."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Broker

from brokers import BrokerFull, build_broker
from brokers.dead_letter_store import dead_letter_store
from jobkit.errors import BrokerConfigError
from jobkit.settings import current
from tests.conftest import env_for, url_for
from tests.support import job_log
from tests.support.processes import child_env, stop_group, wait_until, worker
from tests.support.recovery import (
    BLOCK_FLAG_ENV,
    QUEUE,
    declare_blocking,
    declare_suicidal,
    start_workers,
)

HEARTBEAT_TIMEOUT_MS = 3000


def test_the_heartbeat_timeout_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBKIT_HEARTBEAT_TIMEOUT_MS", raising=False)
    assert current().heartbeat_timeout_ms == 60_000
    monkeypatch.setenv("JOBKIT_HEARTBEAT_TIMEOUT_MS", "5000")
    assert current().heartbeat_timeout_ms == 5000
    for bad in ("500", "soon"):
        monkeypatch.setenv("JOBKIT_HEARTBEAT_TIMEOUT_MS", bad)
        with pytest.raises(BrokerConfigError, match="at least 1000"):
            current()


@pytest.mark.slow
def test_a_sigkilled_workers_jobs_run_again_within_the_heartbeat_timeout(
    redis_broker: Broker, redis_broker_kind: str, tmp_path: Path
) -> None:
    log_path, flag = tmp_path / "jobs.jsonl", tmp_path / "block"
    flag.touch()
    env = child_env(
        url_for(redis_broker_kind),
        JOBKIT_TEST_JOB_LOG=str(log_path),
        JOBKIT_HEARTBEAT_TIMEOUT_MS=str(HEARTBEAT_TIMEOUT_MS),
        **{BLOCK_FLAG_ENV: str(flag)},
    )
    blocking = declare_blocking(redis_broker)
    doomed = start_workers(env, tmp_path / "doomed.log", 2)
    rescuer = None
    try:
        for n in range(2):
            blocking.send(n)
        assert wait_until(lambda: len(_starts(log_path)) == 2, 30)
        os.killpg(doomed.pid, signal.SIGKILL)
        killed_at = time.time()
        doomed.wait(10)
        flag.unlink()  # the second run of each job returns at once
        rescuer = start_workers(env, tmp_path / "rescuer.log", 2)
        limit_s = HEARTBEAT_TIMEOUT_MS / 1000 + 10
        assert wait_until(lambda: len(_ends(log_path)) == 2, limit_s + 20), (
            tmp_path / "rescuer.log"
        ).read_text()[-3000:]
    finally:
        if doomed.poll() is None:
            stop_group(doomed)
        if rescuer is not None:
            stop_group(rescuer)
    again = [e for e in _starts(log_path) if e["t"] > killed_at]
    assert sorted(e["args"][0] for e in again) == [0, 1]
    recovered_s = max(e["t"] for e in again) - killed_at
    print(f"jobs of the killed worker ran again {recovered_s:.1f} s after the kill")
    assert recovered_s <= limit_s, f"jobs ran again {recovered_s:.1f} s after the kill"


def _starts(path: Path) -> list[dict]:
    return [e for e in job_log.read(path) if e["event"] == "start"]


def _ends(path: Path) -> list[dict]:
    return [e for e in job_log.read(path) if e["event"] == "end"]


@pytest.mark.slow
def test_a_job_that_kills_its_worker_is_dead_lettered_after_three_crashes(
    system_broker: Broker, system_broker_kind: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "jobs.jsonl"
    env = child_env(
        url_for(system_broker_kind),
        JOBKIT_TEST_JOB_LOG=str(log_path),
        JOBKIT_HEARTBEAT_TIMEOUT_MS="2000",
        **env_for(system_broker_kind),
    )
    message = declare_suicidal(system_broker).send(1)
    innocent = declare_blocking(system_broker).send(2)  # a job behind it still runs
    store = dead_letter_store(system_broker)

    def settled() -> bool:
        return store.count() == 1 and len(_ends(log_path)) >= 1

    for run in range(8):  # a supervisor restarting the worker group; bounded
        group = start_workers(env, tmp_path / f"worker-{run}.log", 1)
        try:
            # Dramatiq's main process stops the group when its worker dies, but under load
            # it can hang instead: like a supervisor, give up on the group after a while
            # (also when it dead-lettered the job but hangs before running the next one).
            wait_until(lambda: group.poll() is not None or settled(), 20)  # noqa: B023
            if settled():
                break
        finally:
            stop_group(group, timeout=5)
    # At least once: the innocent job may end twice, if a crash beat its ack (it shares the
    # worker process with the suicidal job).
    assert _ends(log_path), [p.read_text()[-500:] for p in tmp_path.glob("worker-*")]
    record = store.get(message.message_id)
    assert record is not None, [p.read_text()[-500:] for p in tmp_path.glob("worker-*.log")]
    assert record["reason"] == "crash_loop" and record["exc_type"] == "CrashLoop"
    starts = [e for e in _starts(log_path) if e["actor"] == "suicidal"]
    assert len(starts) == 3  # three crashes, then dead-lettered without running
    assert {tuple(e["args"]) for e in _ends(log_path)} == {(2,)}
    assert store.get(innocent.message_id) is None


def test_at_maxmemory_a_send_fails_clearly_and_nothing_accepted_is_lost(home: Path) -> None:
    """On an embedded server of its own, so the limit touches no other test."""
    broker = build_broker(f"embedded://{home}")
    try:
        client = broker.client
        runs: list[int] = []

        def job(n: int, padding: str) -> None:
            runs.append(n)

        actor = dramatiq.actor(job, broker=broker, queue_name=QUEUE)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 200_000)
        accepted = []
        with pytest.raises(BrokerFull) as refused:
            for n in range(100_000):  # bounded: 200 kB fill in well under that
                actor.send(n, "x" * 1000)
                accepted.append(n)
        assert "at its maxmemory limit, so nothing was enqueued" in str(refused.value)
        assert "\n" not in str(refused.value)
        client.config_set("maxmemory", 0)
        with worker(broker, threads=4, queues={QUEUE}):
            assert wait_until(lambda: len(runs) == len(accepted), 60)
        assert sorted(runs) == accepted  # every job the broker accepted ran, once
    finally:
        broker.client.config_set("maxmemory", 0)
        broker.close()
