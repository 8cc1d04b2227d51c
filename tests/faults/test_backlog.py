"""A large backlog: the worker's memory stays flat while it drains (bounded; full with a flag)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dramatiq import Broker

from brokers import queue_depths, send_many
from tests.conftest import env_for, url_for
from tests.faults.ledger import Ledger, account
from tests.support.processes import child_env, stop_group, wait_until
from tests.support.recovery import QUEUE, declare_sleepy, start_workers

#: ``JOBKIT_FAULTS_FULL=1`` runs the issue's full size: a 100,000-message backlog.
BACKLOG = 100_000 if os.environ.get("JOBKIT_FAULTS_FULL") == "1" else 10_000

pytestmark = pytest.mark.slow


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(f"no VmRSS for {pid}")


def worker_processes(group_pid: int) -> list[int]:
    """The group's worker processes: children of the dramatiq main process."""
    children = Path(f"/proc/{group_pid}/task/{group_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_large_backlog_drains_with_flat_worker_memory(
    system_broker: Broker, system_broker_kind: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "jobs.jsonl"
    env = child_env(
        url_for(system_broker_kind),
        JOBKIT_TEST_JOB_LOG=str(log_path),
        **env_for(system_broker_kind),
    )
    sleepy = declare_sleepy(system_broker)
    ledger = Ledger()
    ledger.accepted.update(
        m.message_id for m in send_many(sleepy.message(n, 0) for n in range(BACKLOG))
    )

    def remaining() -> int:
        (depth,) = (d for d in queue_depths(system_broker, {QUEUE}) if d.queue == QUEUE)
        return depth.ready + depth.delayed + (depth.in_flight or 0)

    group = start_workers(env, tmp_path / "workers.log", 8)
    samples: list[int] = []
    try:
        for fraction in (0.9, 0.5, 0.1):
            assert wait_until(lambda f=fraction: remaining() <= BACKLOG * f, 120), remaining()
            (worker,) = worker_processes(group.pid)
            samples.append(rss_kib(worker))
        assert wait_until(lambda: remaining() == 0, 120)
    finally:
        stop_group(group)
    result = account(ledger, log_path, system_broker, QUEUE)
    print(f"worker RSS at 10/50/90% drained: {samples} KiB; {result.summary()}")
    assert result.lost == [] and result.finished == BACKLOG
    # Flat: no more than 10 MiB of growth from 10% to 90% drained, whatever the backlog.
    assert samples[-1] - samples[0] <= 10 * 1024, samples
