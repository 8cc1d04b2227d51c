"""Metric updates gathered in memory and written to prometheus-client once a second.

In multiprocess mode every ``inc()`` and ``observe()`` of prometheus-client takes
a lock and writes an mmapped file; a job moves seven values (two histograms of
two values each, the in-flight gauge twice, a counter), which cost a no-op job
on RabbitMQ about a tenth of its time. ``Tally`` keeps the changes in dicts
and a daemon thread applies their sums every ``interval_s`` (and on ``flush()``,
at worker shutdown), so a scrape trails the workers by at most that long.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Any

FLUSH_INTERVAL_S = 1.0


class Tally:
    """Pending increments per metric child (counters, gauges) and per histogram child."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._increments: defaultdict[Any, float] = defaultdict(float)
        #: histogram child -> [sum of observations, count per bucket...]
        self._histograms: dict[Any, list[float]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def inc(self, child: Any, amount: float = 1.0) -> None:
        with self._lock:
            self._increments[child] += amount

    def observe(self, child: Any, value: float) -> None:
        self.update((), ((child, value),))

    def update(
        self,
        increments: tuple[tuple[Any, float], ...],
        observations: tuple[tuple[Any, float], ...] = (),
    ) -> None:
        """Several changes under one lock (a job's start or end moves two or three values)."""
        with self._lock:
            for child, amount in increments:
                self._increments[child] += amount
            for child, value in observations:
                # prometheus-client's own bucket rule: the first upper bound >= value.
                index = bisect.bisect_left(child._upper_bounds, value)
                pending = self._histograms.get(child)
                if pending is None:
                    pending = self._histograms[child] = [0.0] * (len(child._upper_bounds) + 1)
                pending[0] += value
                pending[index + 1] += 1

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="jobkit-metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.flush()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self.flush()

    def flush(self) -> None:
        """Apply every pending change to prometheus-client's values."""
        with self._lock:
            increments, self._increments = self._increments, defaultdict(float)
            histograms, self._histograms = self._histograms, {}
        for child, amount in increments.items():
            if amount:
                child.inc(amount)
        for child, (total, *counts) in histograms.items():
            # What Histogram.observe() does, once per bucket instead of once per job.
            child._sum.inc(total)
            for bucket, count in zip(child._buckets, counts, strict=True):
                if count:
                    bucket.inc(count)
