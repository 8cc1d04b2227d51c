"""Priority benchmarks: an urgent job's wait behind a backlog, and the cost of priorities.

    python -m benchmarks.priorities [--brokers redis,rabbitmq,embedded] [--json PATH]

Scenario "urgent behind backlog": one worker (1 process x 8 threads, started
with the real ``dramatiq`` CLI) drains a backlog kept at about 5,000 jobs of
2 ms; a probe job is sent and the time until it starts is measured, 20 times.
jobkit sends the backlog at ``low`` and the probe at ``critical``; stock
Dramatiq gets the best it has, actor priorities (probe 0, backlog 100).

Scenario "no-op throughput": N no-op jobs queued, then drained by the same
worker; rate between 5% and 100% completed (worker boot excluded), counted in
a file outside the broker. jobkit (priorities on) and stock Dramatiq run
interleaved, K times; ratios are taken pair by pair.
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
    PLAIN,
    System,
    add_common_arguments,
    fill,
    interleaved_throughput,
    per_broker,
    ready_count,
    run_benchmark,
    running_workers,
    scratch,
    wait_for,
)

console = Console(stderr=True)


def urgent_latency(
    system: System, url: str, *, backlog: int, job_ms: int, trials: int, pause_s: float
) -> dict[str, Any]:
    """Seconds from send to start of a probe job sent behind ``backlog`` jobs, ``trials`` times."""
    filler, bench = system.sender(url, confirm=False)
    measured, measured_bench = system.sender(url, confirm=True)
    filler.flush_all()
    fill(bench.backlog, backlog, job_ms)
    depths = []
    with scratch() as work, running_workers(system, url, work / "completions"):
        probes = work / "probes"
        wait_for(
            lambda: ready_count(filler, system.queue) < backlog - 50, 60, "the worker to start"
        )
        for trial in range(trials):
            depth = ready_count(filler, system.queue)
            fill(bench.backlog, max(backlog - depth, 0), job_ms)
            depths.append(ready_count(filler, system.queue))
            measured_bench.probe.send(trial, time.time(), str(probes))
            wait_for(
                lambda n=trial: probes.exists() and len(probes.read_text().splitlines()) > n,
                300,
                f"probe {trial}",
            )
            time.sleep(pause_s)
        samples = [
            float(started) - float(sent)
            for _, sent, started in (line.split() for line in probes.read_text().splitlines())
        ]
    filler.flush_all()
    filler.close()
    measured.close()
    return {"latency_s": samples, "backlog_at_send": depths}


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    return per_broker(args, run_broker, console.print)


def run_broker(args: argparse.Namespace, url: str) -> dict[str, Any]:
    result: dict[str, Any] = {"latency": {}, "throughput": {"jobkit": [], "dramatiq": []}}
    for system in (PLAIN, JOBKIT) if "latency" in args.scenarios else ():
        console.print(f"  urgent job behind {args.backlog} x {args.job_ms} ms: {system.name}")
        result["latency"][system.name] = urgent_latency(
            system,
            url,
            backlog=args.backlog,
            job_ms=args.job_ms,
            trials=args.trials,
            pause_s=args.pause,
        )
    if "throughput" in args.scenarios:
        pair = interleaved_throughput(
            JOBKIT, PLAIN, url, repeat=args.repeat, jobs=args.noop_jobs, say=console.print
        )
        result["throughput"] = {
            "jobkit": pair["a"],
            "dramatiq": pair["b"],
            "ratios": pair["ratios"],
        }
    else:
        result["throughput"]["ratios"] = []
    return result


def print_report(report: dict[str, Any]) -> None:
    table = Table(title="urgent job behind a backlog; no-op throughput (1 process x 8 threads)")
    for column in (
        "broker",
        "system",
        "start p50 ms",
        "start p95 ms",
        "start max ms",
        "no-op jobs/s (median)",
        "jobkit/dramatiq (median, min-max)",
    ):
        table.add_column(column, justify="left" if column in ("broker", "system") else "right")
    for broker_name, result in report["brokers"].items():
        ratios = result["throughput"]["ratios"]
        for system in ("dramatiq", "jobkit"):
            latency = result["latency"].get(system, {}).get("latency_s")
            rates = result["throughput"][system]
            starts = (
                [f"{percentile(latency, p) * 1000:.0f}" for p in (50, 95, 100)]
                if latency
                else ["-"] * 3
            )
            ratio = (
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                if system == "jobkit" and ratios
                else ""
            )
            median_rate = f"{statistics.median(rates):.0f}" if rates else "-"
            table.add_row(broker_name, system, *starts, median_rate, ratio)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.priorities",
        description="Measure how long a critical job waits behind a backlog, and the no-op "
        "throughput of jobkit (priorities on) against stock Dramatiq, in one run.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--scenarios",
        default="latency,throughput",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        help="comma-separated: latency, throughput (default: both)",
    )
    parser.add_argument("--backlog", type=int, default=5000, help="backlog jobs (default: 5000)")
    parser.add_argument("--job-ms", type=int, default=2, help="backlog job length (default: 2)")
    parser.add_argument("--trials", type=int, default=20, help="probe jobs (default: 20)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between probes")
    parser.add_argument("--noop-jobs", type=int, default=5000, help="no-op jobs per run")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per system")
    return run_benchmark(parser, parser.parse_args(argv), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
