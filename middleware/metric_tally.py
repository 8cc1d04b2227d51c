"""Metric updates gathered in memory and written to prometheus-client once a second.

In multiprocess mode every ``inc()`` and ``observe()`` of prometheus-client takes
a lock and writes an mmapped file; a job moves five values (two histograms of
two values each, a counter), which cost a no-op job on RabbitMQ about a tenth
of its time. ``Tally`` keeps the changes in dicts and a daemon thread applies
their sums every ``interval_s`` (and on ``flush()``, at worker shutdown), along
with gauges read at that moment, so a scrape trails the workers by at most
that long.

The writes fall on whole multiples of ``interval_s`` of the wall clock (every
whole second), in every process of every group alike, and each one ends by
telling ``stamp`` the moment its counts run to: a scrape between two writes sees
every process's counts as of the same moment, and a rate over two scrapes
divides by the time between those moments (``jobkit stats``), not by the time
between the scrapes, which may hold one write more or less.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .deliveries import Attempt
from .prometheus_seam import add_observations, bucket_bounds

FLUSH_INTERVAL_S = 1.0

logger = logging.getLogger("jobkit.metrics")


class Tally:
    """Pending increments per metric child (counters, gauges) and per histogram child."""

    def __init__(
        self,
        interval_s: float = FLUSH_INTERVAL_S,
        gauges: Callable[[], dict[Any, float]] | None = None,
        job_children: Callable[[Any], tuple[Any, Any, Any, Any]] | None = None,
        job_bounds: tuple[float, ...] = (),
        stamp: Callable[[float], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        #: Read at each flush: gauge child -> value to set (levels, not changes).
        self.gauges = gauges
        #: For job(): (actor, queue) -> (succeeded counter, failed counter, latency and
        #: duration histograms), whose buckets' upper bounds are ``job_bounds``.
        self.job_children = job_children
        self.job_bounds = job_bounds
        #: Told after each write the Unix time its counts run to (changes made before it).
        self.stamp = stamp
        self._lock = threading.Lock()
        #: (actor, queue, succeeded, queue latency ms, duration s) per attempt finished
        #: since the last flush: plain values, so the garbage collector need not follow
        #: them (an attempt would keep its whole message alive for up to a second).
        self._finished: collections.deque[tuple[str, str, bool, int, float]] = collections.deque()
        self._increments: defaultdict[Any, float] = defaultdict(float)
        #: histogram child -> [sum of observations, count per bucket...]
        self._histograms: dict[Any, list[float]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def inc(self, child: Any, amount: float = 1.0) -> None:
        with self._lock:
            self._increments[child] += amount

    def observe(self, child: Any, value: float) -> None:
        # prometheus-client's own bucket rule: the first upper bound >= value.
        bounds = bucket_bounds(child)
        index = bisect.bisect_left(bounds, value)
        with self._lock:
            pending = self._histograms.get(child)
            if pending is None:
                pending = self._histograms[child] = [0.0] * (len(bounds) + 1)
            pending[0] += value
            pending[index + 1] += 1

    def job(self, attempt: Attempt, succeeded: bool) -> None:
        """One finished attempt (``finish()`` called): its outcome, queue latency and
        duration are summed at the next flush."""
        # atomic: no lock
        self._finished.append(
            (attempt.actor, attempt.queue, succeeded, attempt.latency_ms, attempt.finish())
        )

    def _sum_finished(self, count: int) -> dict[Any, list[float]]:
        """(actor, queue) -> [succeeded, failed, latency sum, duration sum, latency buckets...,
        duration buckets...] over the first ``count`` attempts finished since the last flush."""
        bounds = self.job_bounds
        n = len(bounds)
        jobs: dict[Any, list[float]] = {}
        finished = self._finished
        for _ in range(count):
            actor, queue, succeeded, latency_ms, duration_s = finished.popleft()
            key = actor, queue
            latency_s = latency_ms / 1000
            stats = jobs.get(key)
            if stats is None:
                stats = jobs[key] = [0.0] * (4 + 2 * n)
            stats[0 if succeeded else 1] += 1
            stats[2] += latency_s
            stats[3] += duration_s
            stats[4 + bisect.bisect_left(bounds, latency_s)] += 1
            stats[4 + n + bisect.bisect_left(bounds, duration_s)] += 1
        return jobs

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="jobkit-metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.flush()

    def _run(self) -> None:
        while not self._stopping.wait(next_write_in(time.time(), self.interval_s)):
            try:
                self.flush()
            except Exception:  # a bad value must not stop the metrics for good
                logger.exception("metrics: could not write this second's changes")

    def flush(self) -> None:
        """Apply every pending change to prometheus-client's values, then ``stamp`` them."""
        with self._lock:
            increments, self._increments = self._increments, defaultdict(float)
            histograms, self._histograms = self._histograms, {}
            finished = len(self._finished)  # later ones wait for the next write
            until = time.time()
        for key, stats in self._sum_finished(finished).items():
            assert self.job_children is not None
            succeeded, failed, latency, duration = self.job_children(key)
            increments[succeeded] += stats[0]
            increments[failed] += stats[1]
            n = len(self.job_bounds)
            add_observations(latency, stats[2], stats[4 : 4 + n])
            add_observations(duration, stats[3], stats[4 + n :])
        for child, amount in increments.items():
            if amount:
                child.inc(amount)
        for child, (total, *counts) in histograms.items():
            add_observations(child, total, counts)
        if self.gauges is not None:
            for child, value in self.gauges().items():
                child.set(value)
        if self.stamp is not None:
            # Last: a scrape that sees this time sees every count written up to it.
            self.stamp(until)


def next_write_in(now: float, interval_s: float) -> float:
    """Seconds from ``now`` (Unix time) to the next whole multiple of ``interval_s``."""
    return interval_s - now % interval_s
