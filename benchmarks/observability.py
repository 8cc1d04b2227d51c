"""Observability benchmark: no-op throughput with JSON job logs and metrics on vs off.

    python -m benchmarks.observability [--brokers redis,rabbitmq,embedded] [--json PATH]

Same worker (1 process x 8 threads, real ``dramatiq`` CLI), same broker, same run,
interleaved K times: jobkit's stack with ``JobLogging`` (JSON, two lines per job into
the worker's log file) and ``Metrics`` (multiprocess files plus the exporter) against
the same stack without both. Ratios pair by pair.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.harness import (
    JOBKIT,
    System,
    add_common_arguments,
    free_port,
    interleaved_throughput,
    per_broker,
    run_benchmark,
)

console = Console(stderr=True)


def systems() -> tuple[System, System]:
    on = System(
        "logs+metrics on",
        JOBKIT.app,
        JOBKIT.queue,
        (),
        (
            ("JOBKIT_LOG_FORMAT", "json"),
            ("JOBKIT_METRICS", "on"),
            ("JOBKIT_METRICS_PORT", str(free_port())),
        ),
    )
    off = System("logs+metrics off", JOBKIT.app, JOBKIT.queue, JOBKIT.without, JOBKIT.env)
    return on, off


def run(args: argparse.Namespace) -> dict[str, Any]:
    on, off = systems()

    def run_broker(args: argparse.Namespace, url: str) -> dict[str, Any]:
        pair = interleaved_throughput(
            on, off, url, repeat=args.repeat, jobs=args.noop_jobs, say=console.print
        )
        return {"on": pair["a"], "off": pair["b"], "ratios": pair["ratios"]}

    return per_broker(args, run_broker, console.print)


def print_report(report: dict[str, Any]) -> None:
    table = Table(
        title="no-op throughput, JSON job logs + metrics on vs off (1 process x 8 threads)"
    )
    for column in (
        "broker",
        "jobs/s on (median)",
        "jobs/s off (median)",
        "on/off (median, min-max)",
    ):
        table.add_column(column, justify="left" if column == "broker" else "right")
    for name, result in report["brokers"].items():
        ratios = result["ratios"]
        table.add_row(
            name,
            f"{statistics.median(result['on']):.0f}",
            f"{statistics.median(result['off']):.0f}",
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.observability",
        description="Measure no-op throughput with JSON job logs and metrics on vs off.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--noop-jobs", type=int, default=20_000, help="no-op jobs per run (default: 20000)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per side")
    return run_benchmark(parser, parser.parse_args(argv), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
