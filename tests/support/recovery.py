"""A job that blocks while a flag file exists, for tests that kill workers mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dramatiq
from dramatiq import Actor, Broker

QUEUE = "jobkit-test"
BLOCK_FLAG_ENV = "JOBKIT_TEST_BLOCK_FLAG"


def declare_blocking(broker: Broker) -> Actor:
    def blocking(n: int) -> None:
        """Returns at once, or once the flag file is gone (at most 60 s)."""
        flag = Path(os.environ.get(BLOCK_FLAG_ENV, "/nonexistent"))
        deadline = time.monotonic() + 60
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    return dramatiq.actor(blocking, broker=broker, queue_name=QUEUE, max_retries=0)


FAIL_FLAG_ENV = "JOBKIT_TEST_FAIL_FLAG"


def declare_failing(broker: Broker) -> Actor:
    def failing(n: int) -> None:
        """Blocks as ``blocking`` does, then raises while the fail flag file exists."""
        flag = Path(os.environ.get(BLOCK_FLAG_ENV, "/nonexistent"))
        deadline = time.monotonic() + 60
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(os.environ.get(FAIL_FLAG_ENV, "/nonexistent")).exists():
            raise RuntimeError("failing as the test asked")

    return dramatiq.actor(
        failing, broker=broker, queue_name=QUEUE, max_retries=3, min_backoff=100, max_backoff=500
    )


def declare_suicidal(broker: Broker) -> Actor:
    def suicidal(n: int) -> None:
        """Kills the worker process running it, as a segfault or the OOM killer would."""
        os.kill(os.getpid(), signal.SIGKILL)

    return dramatiq.actor(suicidal, broker=broker, queue_name=QUEUE, max_retries=0)


def declare_sleepy(broker: Broker) -> Actor:
    def sleepy(n: int, ms: int) -> None:
        """Stands in for I/O: sleeps ``ms`` milliseconds."""
        time.sleep(ms / 1000)

    return dramatiq.actor(sleepy, broker=broker, queue_name=QUEUE, max_retries=3)


def start_workers(env: dict[str, str], log: Path, threads: int) -> subprocess.Popen[bytes]:
    """``dramatiq tests.support.recovery_worker``: one process of ``threads`` on the test queue."""
    from tests.support.processes import start_dramatiq

    return start_dramatiq(
        "tests.support.recovery_worker", "-p", "1", "-t", str(threads), "-Q", QUEUE,
        env=env, log=log,
    )  # fmt: skip
