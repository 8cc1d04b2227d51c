"""Actors for the logging tests: some fail once, some always; all log from inside."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import structlog
from dramatiq import Actor, Broker

QUEUE = "jobkit-test"
MARKERS_ENV = "JOBKIT_TEST_MARKERS"


NOISE = 30_000  # characters per printed line: over the 16 KiB a pipe message sends in one write


@dataclass(frozen=True)
class LoggedActors:
    flaky: Actor
    doomed: Actor
    noisy: Actor


def declare_logged(broker: Broker) -> LoggedActors:
    def flaky(n: int, password: str, note: str, fail_first: bool = False) -> None:
        """Logs from inside; with ``fail_first``, fails its first attempt."""
        logging.getLogger("app").info("inner stdlib log for %s", n)
        structlog.get_logger("app").info("inner structlog event", n=n)
        marker = Path(os.environ.get(MARKERS_ENV, "/tmp")) / f"flaky-{n}"
        if fail_first and not marker.exists():
            marker.touch()
            raise RuntimeError(f"first attempt of {n} fails")

    def doomed(n: int, api_key: str) -> None:
        raise ValueError(f"job {n} always fails")

    def noisy(n: int) -> None:
        """Prints long lines to stdout and stderr, as careless actor code does."""
        print(f"stdout {n} " + "o" * NOISE)
        sys.stderr.write(f"stderr {n} " + "e" * NOISE + "\n")
        logging.getLogger("app").info("noisy %s done", n)

    return LoggedActors(
        noisy=dramatiq.actor(noisy, broker=broker, queue_name=QUEUE, max_retries=0),
        flaky=dramatiq.actor(
            flaky, broker=broker, queue_name=QUEUE, min_backoff=100, max_backoff=200
        ),
        doomed=dramatiq.actor(
            doomed, broker=broker, queue_name=QUEUE, max_retries=1, min_backoff=100, max_backoff=200
        ),
    )
