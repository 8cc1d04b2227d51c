"""The jobs benchmarks run, declared the same way on a jobkit broker and on a plain one."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import dramatiq
from dramatiq import Actor, Broker

QUEUE = "bench"
#: Plain Dramatiq declares queues without x-max-priority, so on RabbitMQ it needs its own.
PLAIN_QUEUE = "bench-plain"
COMPLETIONS_ENV = "JOBKIT_BENCH_COMPLETIONS"

_completions_fd: int | None = None


def _record_completion() -> None:
    """One byte per finished job in $JOBKIT_BENCH_COMPLETIONS: counted outside the broker."""
    global _completions_fd
    if _completions_fd is None:
        _completions_fd = os.open(
            os.environ[COMPLETIONS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
    os.write(_completions_fd, b".")


def _append_line(path: str, line: str) -> None:
    """One whole line appended in one write (workers append concurrently)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def record_completion() -> None:
    """For peers' jobs (Celery, RQ): the same completion count as Dramatiq's."""
    _record_completion()


@dataclass(frozen=True)
class BenchActors:
    noop: Actor
    backlog: Actor
    probe: Actor
    #: Sleeps ``ms`` then counts as completed (latency-bound work).
    work: Actor
    #: Appends ``sent_at finished_at`` to ``path`` (end-to-end latency).
    timed: Actor
    #: jobkit only: an actor limited to 5 jobs a second.
    limited: Actor | None = None


def declare(broker: Broker, *, jobkit: bool) -> BenchActors:
    """Declare the benchmark actors on ``broker``.

    On jobkit the backlog runs at level ``low`` and the probe at ``critical``; on
    plain Dramatiq the best it offers, actor priorities (lower runs sooner),
    which only reorder messages a worker has already fetched.
    """
    low, urgent = ("low", "critical") if jobkit else (100, 0)

    def bench_noop() -> None:
        _record_completion()

    def bench_backlog(ms: int) -> None:
        time.sleep(ms / 1000)

    def bench_probe(trial: int, sent_at: float, path: str) -> None:
        _append_line(path, f"{trial} {sent_at!r} {time.time()!r}")

    queue = QUEUE if jobkit else PLAIN_QUEUE

    def make(fn, priority, **options) -> Actor:  # noqa: ANN001, ANN003
        return dramatiq.actor(
            fn, broker=broker, queue_name=queue, priority=priority, max_retries=0, **options
        )

    def bench_limited() -> None:
        _record_completion()

    def bench_work(ms: int) -> None:
        time.sleep(ms / 1000)
        _record_completion()

    def bench_timed(sent_at: float, path: str) -> None:
        _append_line(path, f"{sent_at!r} {time.time()!r}")

    normal = "normal" if jobkit else 0
    return BenchActors(
        work=make(bench_work, normal),
        timed=make(bench_timed, normal),
        noop=make(bench_noop, 0 if not jobkit else "normal"),
        backlog=make(bench_backlog, low),
        probe=make(bench_probe, urgent),
        limited=make(bench_limited, "normal", rate_limit="5/s") if jobkit else None,
    )
