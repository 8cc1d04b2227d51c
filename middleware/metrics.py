"""Prometheus metrics: one endpoint per worker group (``dramatiq``/``jobkit worker`` run).

Worker processes write their metrics in prometheus-client's multiprocess mode to
``$JOBKIT_METRICS_DIR/<pid of the dramatiq main process>``; one exporter process
(a Dramatiq "fork", ``brokers.metrics_exporter``) serves their sum, plus queue
depths read from the broker at scrape time, on
``JOBKIT_METRICS_HOST:JOBKIT_METRICS_PORT`` (127.0.0.1:9191).

Settings: ``JOBKIT_METRICS`` (``on``; ``off`` disables), ``JOBKIT_METRICS_HOST``,
``JOBKIT_METRICS_PORT``, ``JOBKIT_METRICS_DIR`` (``/tmp/jobkit-metrics-<uid>``).
If the port is taken (say, a second worker group on the host), the exporter
logs one line saying so and stops; the workers go on. Workers write their
changes on every whole second (``metric_tally``), so a scrape trails them by up
to 1 s; each process's ``jobkit_metrics_written_timestamp_seconds`` says when
its counts run to, and the exporter's ``jobkit_worker_group_info`` names the
group (app, broker), so ``jobkit stats`` can tell it reads its own group.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dramatiq import Broker, Message, Worker
from dramatiq.broker import MessageProxy

from jobkit.settings import current

from . import outcomes
from .deliveries import ATTEMPTS
from .hooks import JobkitMiddleware
from .job_records import JobCancelled, cancel_requested
from .metric_tally import Tally

ENABLED_ENV = "JOBKIT_METRICS"
HOST_ENV = "JOBKIT_METRICS_HOST"
PORT_ENV = "JOBKIT_METRICS_PORT"
DIR_ENV = "JOBKIT_METRICS_DIR"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9191
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

logger = logging.getLogger("jobkit.metrics")


def address() -> tuple[str, int]:
    """Where the exporter listens (``JOBKIT_METRICS_HOST``, ``JOBKIT_METRICS_PORT``)."""
    settings = current()
    return settings.metrics_host, settings.metrics_port


def group_dir(group: int | None = None) -> Path:
    """This worker group's multiprocess directory (the group is the dramatiq main process)."""
    return current().metrics_dir / str(group if group is not None else os.getppid())


class Metrics(JobkitMiddleware):
    """Counts jobs by outcome, times them, and exposes it all through one exporter fork."""

    def __init__(self, *, on: bool = True, exporter: Callable[[], int] | None = None) -> None:
        #: ``JOBKIT_METRICS``: off, no metrics are kept and no exporter runs.
        self.on = on
        #: The exporter's entry point, a module-level function the dramatiq CLI runs as a
        #: fork (``brokers.metrics_exporter.serve_metrics``); none, no endpoint.
        self.exporter = exporter
        self._m: dict[str, Any] = {}
        #: Per worker thread, the running attempt (timed once, shared with JobLogging,
        #: which forgets it at the ack or nack). The in-flight gauge counts them at each flush.
        self._attempts = ATTEMPTS
        #: (metric, label values) -> child: prometheus-client's labels() is slow per call.
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._tally = Tally(
            gauges=self._in_flight,
            job_children=self._job_children,
            job_bounds=(*LATENCY_BUCKETS, math.inf),
            stamp=self._written,
        )

    @property
    def forks(self) -> list[Any]:
        return [self.exporter] if self.on and self.exporter is not None else []

    def after_process_boot(self, broker: Broker) -> None:
        if not self.on:
            return
        directory = group_dir()
        directory.mkdir(parents=True, exist_ok=True)
        # The exporter reports depth for the queues the workers consume (AMQP cannot list them).
        (directory / f"queues-{os.getpid()}.json").write_text(
            json.dumps(sorted(broker.get_declared_queues()))
        )
        # Must be set before prometheus_client is first imported in this process.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(directory))
        import prometheus_client as prom

        registry = prom.CollectorRegistry()  # values live in the multiprocess files
        labels = ("actor", "queue")
        self._m = {
            "jobs": prom.Counter(
                "jobkit_jobs", "Jobs processed, by outcome of the attempt",
                (*labels, "outcome"), registry=registry,
            ),
            "retried": prom.Counter(
                "jobkit_jobs_retried", "Retries scheduled", labels, registry=registry
            ),
            "rate_limited": prom.Counter(
                "jobkit_jobs_rate_limited", "Jobs deferred by a rate or concurrency limit",
                labels, registry=registry,
            ),
            "dead_lettered": prom.Counter(
                "jobkit_jobs_dead_lettered", "Jobs dead-lettered, by reason",
                (*labels, "reason"), registry=registry,
            ),
            "duration": prom.Histogram(
                "jobkit_job_duration_seconds", "Time running a job", labels,
                buckets=LATENCY_BUCKETS, registry=registry,
            ),
            "latency": prom.Histogram(
                "jobkit_job_queue_latency_seconds", "Time from enqueue (or eta) to start",
                labels, buckets=LATENCY_BUCKETS, registry=registry,
            ),
            "in_flight": prom.Gauge(
                "jobkit_jobs_in_flight", "Jobs running now", labels,
                multiprocess_mode="livesum", registry=registry,
            ),
            # One sample per live process (a pid label): a scrape is consistent when
            # they agree, and rates divide by the time between two of them.
            "written": prom.Gauge(
                "jobkit_metrics_written_timestamp_seconds",
                "When this worker process last wrote its metrics (Unix time): its counts "
                "run to then", multiprocess_mode="liveall", registry=registry,
            ),
        }  # fmt: skip
        self._tally.start()

    def _child(self, name: str, *labels: str) -> Any:
        key = (name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._m[name].labels(*labels)
        return child

    def _written(self, until: float) -> None:
        if self._m:
            self._m["written"].set(until)

    def _in_flight(self) -> dict[Any, float]:
        counts: dict[Any, float] = dict.fromkeys(
            (child for (name, _), child in list(self._children.items()) if name == "in_flight"), 0
        )
        for attempt in self._attempts.running():
            if attempt.duration_s is None:
                child = self._child("in_flight", *attempt.labels)
                counts[child] = counts.get(child, 0) + 1
        return counts

    def _job_children(self, labels: tuple[str, str]) -> tuple[Any, Any, Any, Any]:
        return (
            self._child("jobs", *labels, "succeeded"),
            self._child("jobs", *labels, "failed"),
            self._child("latency", *labels),
            self._child("duration", *labels),
        )

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if self._m:
            self._attempts.begin(message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if not self._m:
            return
        attempt = self._attempts.get(message)
        if attempt is None:  # it did not start here (a middleware before this one failed)
            outcome = "succeeded" if exception is None else "failed"
            self._tally.inc(self._child("jobs", message.actor_name, message.queue_name, outcome))
            return
        if isinstance(exception, JobCancelled) or cancel_requested():
            attempt.finish()  # neither a success nor a failure: counted apart, not timed
            self._tally.inc(self._child("jobs", *attempt.labels, "cancelled"))
            return
        attempt.finish()
        self._tally.job(attempt, exception is None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        if not self._m:
            return
        attempt = self._attempts.get(message)
        if attempt is not None:
            attempt.finish()  # no longer in flight
        labels = (message.actor_name, message.queue_name)
        if outcomes.peek(message.message_id) == outcomes.DEFERRED:
            self._tally.inc(self._child("rate_limited", *labels))
        else:
            self._tally.inc(self._child("jobs", *labels, "skipped"))

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        # Deferrals are counted apart (after_skip_message).
        if (
            self._m
            and delay is not None
            and outcomes.enqueue_kind(message, delay) == outcomes.RETRY
        ):
            self._tally.inc(self._child("retried", message.actor_name, message.queue_name))

    def after_dead_letter(self, broker: Broker, record: dict[str, Any]) -> None:
        if self._m:
            labels = (record.get("actor") or "", record["queue"], record["reason"])
            self._tally.inc(self._child("dead_lettered", *labels))

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        if self._m:
            from prometheus_client import multiprocess

            self._tally.stop()
            multiprocess.mark_process_dead(os.getpid())
