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
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.harness import (
    JOBKIT,
    PLAIN,
    System,
    add_common_arguments,
    broker_environment,
    completed,
    machine_facts,
    ready_count,
    run_benchmark,
    running_workers,
    scratch,
    wait_for,
)
from brokers import embedded

URLS = {
    "redis": "redis://127.0.0.1:6379/14",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
}
console = Console(stderr=True)


def fill(actor: Any, count: int, *args: Any) -> None:
    for _ in range(count):
        actor.send(*args)


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


def noop_throughput(system: System, url: str, *, jobs: int) -> float:
    """No-op jobs per second drained by one 1x8 worker, from 5% to 100% done."""
    filler, bench = system.sender(url, confirm=False)
    filler.flush_all()
    fill(bench.noop, jobs)
    with scratch() as work, running_workers(system, url, work / "completions"):
        completions = work / "completions"
        start_mark = max(jobs // 20, 1)
        wait_for(lambda: completed(completions) >= start_mark, 120, "the first jobs")
        started, done_at_start = time.monotonic(), completed(completions)
        wait_for(lambda: completed(completions) >= jobs, 600, f"{jobs} no-op jobs", 0.001)
        elapsed = time.monotonic() - started
    filler.flush_all()
    filler.close()
    return (jobs - done_at_start) / elapsed


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_facts(), "settings": vars(args), "brokers": {}}
    embedded_home = Path(tempfile.mkdtemp(prefix="jk-bench-", dir="/tmp"))
    try:
        for broker_name in args.brokers:
            if broker_name == "embedded":
                url = embedded.ensure_server(embedded_home).url
            else:
                url = URLS[broker_name]
            console.print(f"[bold]{broker_name}[/]")
            with broker_environment(broker_name):
                report["brokers"][broker_name] = run_broker(args, url)
    finally:
        embedded.stop(embedded_home)
        shutil.rmtree(embedded_home, ignore_errors=True)
    return report


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
    for repeat in range(args.repeat if "throughput" in args.scenarios else 0):
        for system in (PLAIN, JOBKIT) if repeat % 2 == 0 else (JOBKIT, PLAIN):
            console.print(f"  no-op throughput, run {repeat + 1}: {system.name}")
            result["throughput"][system.name].append(
                noop_throughput(system, url, jobs=args.noop_jobs)
            )
    jobkit, plain = result["throughput"]["jobkit"], result["throughput"]["dramatiq"]
    result["throughput"]["ratios"] = [j / p for j, p in zip(jobkit, plain, strict=True)]
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
