"""``jobkit stats``: throughput and failure rate per actor, read from a worker group's metrics."""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from jobkit.errors import JobkitError
from jobkit.output import print_json, print_table
from middleware.metrics import address

COUNTERS = {
    "jobkit_jobs": "jobs",
    "jobkit_jobs_retried": "retried",
    "jobkit_jobs_rate_limited": "rate_limited",
    "jobkit_jobs_dead_lettered": "dead_lettered",
}


class MetricsUnavailable(JobkitError, ConnectionError):
    """The metrics endpoint did not answer."""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "stats",
        help="throughput and failure rate per actor, from the workers' metrics",
        description="Read the metrics endpoint of a running worker group twice, --interval "
        "seconds apart, and print per actor: jobs per second, failure rate, retries, "
        "rate-limit deferrals and dead letters in that window, and totals since the "
        "workers started.",
    )
    parser.add_argument(
        "--url",
        help="metrics endpoint (default: http://$JOBKIT_METRICS_HOST:$JOBKIT_METRICS_PORT/metrics, "
        "i.e. http://127.0.0.1:9191/metrics)",
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, metavar="S", help="sampling window (default: 5)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def scrape(url: str) -> dict[str, dict[str, float]]:
    """Per actor, the jobkit counters at ``url``: jobs by outcome, retried, rate_limited, dead."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - operator's URL
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MetricsUnavailable(
            f"no metrics at {url}: {reason}; are workers running (jobkit worker) with "
            "JOBKIT_METRICS on, and is --url right?"
        ) from None
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        name = COUNTERS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            actor = sample.labels.get("actor", "?")
            key = f"{name}_{sample.labels['outcome']}" if name == "jobs" else name
            totals[actor][key] += sample.value
    return totals


def summarise(before: dict, after: dict, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for actor in sorted(set(before) | set(after)):
        now, then = after.get(actor, {}), before.get(actor, {})

        def delta(key: str, now: dict = now, then: dict = then) -> float:
            return now.get(key, 0.0) - then.get(key, 0.0)

        done = delta("jobs_succeeded") + delta("jobs_failed")
        total_done = now.get("jobs_succeeded", 0.0) + now.get("jobs_failed", 0.0)
        rows.append(
            {
                "actor": actor,
                "jobs_per_s": round(done / seconds, 2),
                "failure_rate": round(delta("jobs_failed") / done, 4) if done else None,
                "retried": int(delta("retried")),
                "rate_limited": int(delta("rate_limited")),
                "dead_lettered": int(delta("dead_lettered")),
                "total_processed": int(total_done),
                "total_failed": int(now.get("jobs_failed", 0.0)),
                "total_dead_lettered": int(now.get("dead_lettered", 0.0)),
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    host, port = address()
    url = args.url or f"http://{host}:{port}/metrics"
    before = scrape(url)
    started = time.monotonic()
    time.sleep(max(args.interval, 0.1))
    after = scrape(url)
    rows = summarise(before, after, time.monotonic() - started)
    if args.json:
        print_json({"url": url, "interval_s": args.interval, "actors": rows})
        return 0
    print_table(
        f"last {args.interval:g} s, from {url}",
        ("actor", "jobs/s", "failure rate", "retried", "rate-limited", "dead-lettered",
         "total processed", "total failed", "total dead-lettered"),
        [
            (
                r["actor"], r["jobs_per_s"],
                f"{r['failure_rate']:.1%}" if r["failure_rate"] is not None else None,
                r["retried"], r["rate_limited"], r["dead_lettered"],
                r["total_processed"], r["total_failed"], r["total_dead_lettered"],
            )
            for r in rows
        ],
    )  # fmt: skip
    return 0
