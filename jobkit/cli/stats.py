"""``jobkit stats``: throughput and failure rate per actor, read from a worker group's metrics.

The endpoint must be this project's worker group: its ``jobkit_worker_group_info``
names the app and the broker its workers run with, and they must be the ones
``jobkit`` is given (``--app`` / ``JOBKIT_APP``, ``JOBKIT_BROKER_URL``), or stats
says whose endpoint it is and stops. Workers write their counts on every whole
second (``middleware.metric_tally``) and say when
(``jobkit_metrics_written_timestamp_seconds``): the two scrapes are taken between
writes, and rates divide by the time between the writes they show, not by the
time between the scrapes, which may hold one write more or one less.
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from brokers.urls import configured_spec
from jobkit.app import APP_ENV, app_name
from jobkit.arguments import http_url, whole
from jobkit.errors import JobkitError
from jobkit.output import print_json, print_table
from jobkit.settings import current
from middleware.metric_tally import FLUSH_INTERVAL_S, next_write_in
from middleware.metrics import PORT_ENV, address

COUNTERS = {
    "jobkit_jobs": "jobs",
    "jobkit_jobs_retried": "retried",
    "jobkit_jobs_rate_limited": "rate_limited",
    "jobkit_jobs_dead_lettered": "dead_lettered",
}
GROUP_INFO = "jobkit_worker_group_info"
WRITTEN = "jobkit_metrics_written_timestamp_seconds"
#: The shortest window: the time between two metric writes of a worker process.
MIN_INTERVAL_S = FLUSH_INTERVAL_S
#: Scrapes are taken this far into the time between two writes (as a fraction of it),
#: well clear of the writes themselves.
SCRAPE_PHASE = (0.25, 0.75)
#: A scrape that caught some processes before this second's write and some after is
#: taken again (after RETRY_S) this many times.
RETRIES = 5
RETRY_S = 0.1
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671}


class MetricsUnavailable(JobkitError, ConnectionError):
    """The metrics endpoint did not answer."""


class NotAWorkerGroup(JobkitError, ValueError):
    """The endpoint does not say which jobkit worker group it serves."""


class OtherWorkerGroup(JobkitError, ValueError):
    """The endpoint serves the workers of another app or broker."""


class NoWrites(JobkitError, RuntimeError):
    """No worker process wrote its metrics during the window."""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "stats",
        help="throughput and failure rate per actor, from the workers' metrics",
        description="Read the metrics endpoint of a running worker group twice, --interval "
        "seconds apart, and print per actor: jobs per second, failure rate, retries, "
        "rate-limit deferrals and dead letters in that window, and totals since the "
        "workers started. The endpoint must serve this app's workers on this broker "
        f"(--app / {APP_ENV}, JOBKIT_BROKER_URL), else stats names the group it found "
        "and exits 1.",
    )
    parser.add_argument(
        "--url",
        type=http_url,
        help=f"metrics endpoint (default: http://$JOBKIT_METRICS_HOST:${PORT_ENV}/metrics, "
        "i.e. http://127.0.0.1:9191/metrics)",
    )
    parser.add_argument(
        "--interval",
        type=whole(int(MIN_INTERVAL_S)),
        default=5,
        metavar="S",
        help=f"sampling window in whole seconds, at least {MIN_INTERVAL_S:g} "
        "(workers write their counts once a second; default: 5)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class Snapshot:
    """One scrape: per actor the jobkit counters, the group's name, when each process wrote."""

    #: actor -> jobs by outcome (``jobs_succeeded``...), retried, rate_limited, dead_lettered
    totals: dict[str, dict[str, float]]
    #: (app, broker) from ``jobkit_worker_group_info``; ``None`` if the endpoint has none.
    group: tuple[str, str] | None
    #: Per live worker process, the Unix time its counts run to.
    written: tuple[float, ...]

    @property
    def as_of(self) -> float | None:
        return max(self.written, default=None)

    def consistent(self) -> bool:
        """Every process still writing showed the same write (none caught before a write
        that the others had made); one silent for two writes is stuck or gone."""
        if not self.written:
            return True
        newest = max(self.written)
        writing = [w for w in self.written if newest - w < 2 * MIN_INTERVAL_S]
        return newest - min(writing) < MIN_INTERVAL_S / 2


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - operator's URL
            return str(response.read().decode())
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MetricsUnavailable(
            f"no metrics at {url}: {reason}; are workers running (jobkit worker) with "
            f"JOBKIT_METRICS on, and is --url (or {PORT_ENV}) right?"
        ) from None


def scrape(url: str) -> Snapshot:
    """The jobkit counters per actor at ``url``, the group it names and its processes' writes."""
    from prometheus_client.parser import text_string_to_metric_families

    text = fetch(url)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    group: tuple[str, str] | None = None
    written: list[float] = []
    try:
        for family in text_string_to_metric_families(text):
            name = COUNTERS.get(family.name)
            for sample in family.samples:
                if sample.name == GROUP_INFO:
                    group = (sample.labels.get("app", ""), sample.labels.get("broker", ""))
                elif sample.name == WRITTEN:
                    written.append(sample.value)
                elif name is not None and sample.name.endswith("_total"):
                    actor = sample.labels.get("actor", "?")
                    key = f"{name}_{sample.labels['outcome']}" if name == "jobs" else name
                    totals[actor][key] += sample.value
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise NotAWorkerGroup(
            f"{url} did not answer with Prometheus metrics ({error}); point jobkit stats at "
            f"your workers' exporter: {PORT_ENV} as the workers have it, or --url"
        ) from None
    return Snapshot(totals, group, tuple(written))


def check_group(snapshot: Snapshot, url: str, app: str, broker: str) -> None:
    """Refuse an endpoint that does not name its group, or names another one."""
    if snapshot.group is None:
        raise NotAWorkerGroup(
            f"{url} does not say which worker group it serves (no {GROUP_INFO}): it is not "
            "a jobkit worker group's metrics endpoint, or one of an older jobkit; point "
            f"jobkit stats at your workers' exporter ({PORT_ENV} as the workers have it, or "
            "--url), or upgrade the workers"
        )
    their_app, their_broker = snapshot.group
    # A group started outside the dramatiq CLI does not know its app ("").
    same_app = not their_app or _module(their_app) == _module(app)
    if same_app and _broker_key(their_broker) == _broker_key(broker):
        return
    raise OtherWorkerGroup(
        f"{url} serves another worker group (app {their_app or '?'!r}, broker "
        f"{their_broker}), not this one (app {app!r}, broker {broker}); run jobkit stats "
        f"with the {PORT_ENV} your workers have (or --url), or with their --app and "
        "JOBKIT_BROKER_URL"
    )


def _module(app: str) -> str:
    return app.partition(":")[0].strip()


def _broker_key(url: str) -> tuple[object, ...]:
    """``url`` (masked) with the defaults spelled out: the same server compares equal."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return (url,)
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return (url,)
    path = unquote(parts.path[1:])
    path = path or ("0" if scheme.startswith("redis") else "/")
    return scheme, (parts.hostname or "").lower(), port, path, parts.query


def scrape_between_writes(url: str, at: float) -> Snapshot:
    """Wait until ``at`` (Unix time), scrape, and again while the processes disagree."""
    time.sleep(max(0.0, at - time.time()))
    snapshot = scrape(url)
    for _ in range(RETRIES):
        if snapshot.consistent():
            break
        time.sleep(RETRY_S)
        snapshot = scrape(url)
    return snapshot


def first_scrape_time(now: float) -> float:
    """The first moment from ``now`` well between two writes (see :data:`SCRAPE_PHASE`)."""
    since = MIN_INTERVAL_S - next_write_in(now, MIN_INTERVAL_S)  # since the last write
    early, late = (fraction * MIN_INTERVAL_S for fraction in SCRAPE_PHASE)
    if since < early:
        return now + early - since
    if since > late:
        return now + MIN_INTERVAL_S - since + early
    return now


def summarise(
    before: Snapshot, after: Snapshot, seconds: float, until: float
) -> list[dict[str, Any]]:
    """One row per actor: the window's ``seconds`` up to ``until`` (Unix time), and totals."""
    rows = []
    for actor in sorted(set(before.totals) | set(after.totals)):
        now, then = after.totals.get(actor, {}), before.totals.get(actor, {})

        def delta(key: str, now: dict = now, then: dict = then) -> float:
            return now.get(key, 0.0) - then.get(key, 0.0)

        done = delta("jobs_succeeded") + delta("jobs_failed")
        total_done = now.get("jobs_succeeded", 0.0) + now.get("jobs_failed", 0.0)
        rows.append(
            {
                "actor": actor,
                "window_s": round(seconds, 3),
                "until": round(until, 3),
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


def window(before: Snapshot, after: Snapshot, started: float, ended: float) -> float:
    """Seconds between the writes the two scrapes show (between the scrapes if none wrote)."""
    if before.as_of is None or after.as_of is None:
        return ended - started
    seconds = after.as_of - before.as_of
    if seconds <= 0:
        written = time.strftime("%H:%M:%S", time.localtime(after.as_of))
        raise NoWrites(
            f"no worker process wrote its metrics during the {ended - started:.0f} s window "
            f"(the last write was at {written}): the workers may be stuck or stopping; "
            "look at their logs and try again"
        )
    return seconds


def run(args: argparse.Namespace) -> int:
    interval = args.interval  # whole seconds, at least one write apart (checked as parsed)
    # Whole writes: both scrapes fall at the same point between two writes.
    writes = max(1, round(interval / MIN_INTERVAL_S))
    host, port = address()
    url = args.url or f"http://{host}:{port}/metrics"
    app, broker = app_name(args.app), configured_spec(current()).display_url
    start = first_scrape_time(time.time())
    before = scrape_between_writes(url, start)
    check_group(before, url, app, broker)
    end = start + writes * MIN_INTERVAL_S
    after = scrape_between_writes(url, end)
    check_group(after, url, app, broker)  # the port may have changed hands meanwhile
    until = after.as_of or end
    rows = summarise(before, after, window(before, after, start, end), until)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no jobs counted yet by the worker group at {url} (app {app!r}, broker {broker})")
        return 0
    print_table(
        f"{round(rows[0]['window_s'], 1):g} s to "
        f"{time.strftime('%H:%M:%S', time.localtime(until))}, "
        f"app {app!r} on {broker}, from {url}",
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
