"""Rate- and concurrency-limited actors shared by the tests and their worker processes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import dramatiq
from dramatiq import Actor, Broker

QUEUE = "jobkit-test"
#: While this file exists, ``exclusive`` jobs whose ms is negative block (a "hog").
HOG_FLAG_ENV = "JOBKIT_TEST_HOG_FLAG"


@dataclass(frozen=True)
class LimitedActors:
    limited: Actor
    per_key: Actor
    exclusive: Actor


def declare_limited(broker: Broker) -> LimitedActors:
    def limited(n: int) -> None:
        """20 jobs a second across every worker."""

    def per_key(key: str, n: int) -> None:
        """10 jobs a second for each key."""

    def exclusive(key: str, ms: int, fail: bool = False) -> None:
        """At most two at once per key; sleeps ``ms``; a negative ms hogs while the flag exists."""
        if ms < 0:
            flag = Path(os.environ.get(HOG_FLAG_ENV, "/nonexistent"))
            deadline = time.monotonic() + 60
            while flag.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            time.sleep(ms / 1000)
        if fail:
            raise RuntimeError("this job fails on purpose")

    return LimitedActors(
        limited=dramatiq.actor(
            limited, broker=broker, queue_name=QUEUE, rate_limit="20/s", max_retries=3
        ),
        per_key=dramatiq.actor(
            per_key, broker=broker, queue_name=QUEUE, rate_limit="10/s", rate_limit_key="key"
        ),
        exclusive=dramatiq.actor(
            exclusive,
            broker=broker,
            queue_name=QUEUE,
            concurrency_limit=2,
            rate_limit_key="key",
            max_retries=0,
        ),
    )
