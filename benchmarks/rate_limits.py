"""Rate-limit benchmarks: worker CPU while every job waits on its limit; the cost of RateLimits.

    python -m benchmarks.rate_limits [--brokers redis,rabbitmq,embedded] [--json PATH]

CPU: one jobkit worker (1 process x 8 threads, real ``dramatiq`` CLI) idles for
a window, then holds ``--limited-jobs`` jobs of an actor limited to 5/s and is
measured for the same window; CPU seconds of the worker's process group per
wall second (1.0 = one core busy).

Throughput: no-op jobs of an unlimited actor, jobkit's full stack against the
same stack without RateLimits, interleaved, K times; ratios pair by pair.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.harness import (
    JOBKIT,
    System,
    add_common_arguments,
    completed,
    fill,
    group_cpu_seconds,
    interleaved_throughput,
    per_broker,
    ready_count,
    run_benchmark,
    running_workers,
    scratch,
    wait_for,
)

console = Console(stderr=True)
WITHOUT_RATE_LIMITS = System(
    "jobkit-without-ratelimits",
    JOBKIT.app,
    JOBKIT.queue,
    (*JOBKIT.without, "RateLimits"),
    JOBKIT.env,
)


def limited_cpu(url: str, *, jobs: int, window_s: float) -> dict[str, float]:
    """Worker CPU share: idle, then while ``jobs`` jobs of a 5/s actor wait on the limit."""
    filler, bench = JOBKIT.sender(url, confirm=False)
    filler.flush_all()
    _forget_reserved_slots(filler)
    with scratch() as work, running_workers(JOBKIT, url, work / "completions") as workers:
        completions = work / "completions"
        bench.noop.send()
        wait_for(lambda: completed(completions) >= 1, 60, "the worker to start")
        time.sleep(1.0)
        before = group_cpu_seconds(workers.pid)
        time.sleep(window_s)
        idle = (group_cpu_seconds(workers.pid) - before) / window_s

        assert bench.limited is not None
        fill(bench.limited, jobs)
        # Let every job be fetched and deferred once (a confirmed publish each on
        # RabbitMQ), then measure the waiting.
        wait_for(lambda: ready_count(filler, JOBKIT.queue) == 0, 300, "every job to be deferred")
        time.sleep(1.0)
        before, started, done_before = (
            group_cpu_seconds(workers.pid),
            time.monotonic(),
            completed(completions),
        )
        time.sleep(window_s)
        elapsed = time.monotonic() - started
        limited = (group_cpu_seconds(workers.pid) - before) / elapsed
        ran = completed(completions) - done_before
    filler.flush_all()
    filler.close()
    return {"idle_cpu": idle, "limited_cpu": limited, "limited_rate": ran / elapsed}


def _forget_reserved_slots(broker: Any) -> None:
    """Purging a queue keeps the slots its jobs reserved; start each run from a free limit."""
    from middleware.rate_limits import KEY_PREFIX, RateLimits

    for middleware in broker.middleware:
        if isinstance(middleware, RateLimits) and middleware.store is not None:
            client = middleware.store.client
            for key in client.scan_iter(match=f"{KEY_PREFIX}:bench_limited*"):
                client.delete(key)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return per_broker(args, run_broker, console.print)


def run_broker(args: argparse.Namespace, url: str) -> dict[str, Any]:
    console.print(f"  worker CPU, idle and with {args.limited_jobs} limited jobs")
    result: dict[str, Any] = {"cpu": limited_cpu(url, jobs=args.limited_jobs, window_s=args.window)}
    pair = interleaved_throughput(
        JOBKIT, WITHOUT_RATE_LIMITS, url, repeat=args.repeat, jobs=args.noop_jobs, say=console.print
    )
    result["throughput"] = {"with": pair["a"], "without": pair["b"], "ratios": pair["ratios"]}
    return result


def print_report(report: dict[str, Any]) -> None:
    table = Table(title="rate limits: worker CPU while all jobs wait; cost for unlimited jobs")
    columns = (
        "broker", "idle CPU", "CPU, all jobs limited", "limited jobs/s (limit 5)",
        "no-op jobs/s with RateLimits", "without", "with/without (median, min-max)",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "broker" else "right")
    for name, result in report["brokers"].items():
        cpu, rates = result["cpu"], result["throughput"]
        ratios = rates["ratios"]
        table.add_row(
            name,
            f"{cpu['idle_cpu'] * 100:.1f}%",
            f"{cpu['limited_cpu'] * 100:.1f}%",
            f"{cpu['limited_rate']:.1f}",
            f"{statistics.median(rates['with']):.0f}",
            f"{statistics.median(rates['without']):.0f}",
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rate_limits",
        description="Measure worker CPU while every job waits on its rate limit, and the "
        "throughput of unlimited jobs with and without the RateLimits middleware.",
    )
    add_common_arguments(parser)
    parser.add_argument("--limited-jobs", type=int, default=2000, help="jobs held by the limit")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window, seconds")
    parser.add_argument("--noop-jobs", type=int, default=5000, help="no-op jobs per run")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per side")
    return run_benchmark(parser, parser.parse_args(argv), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
