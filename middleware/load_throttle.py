"""Load-aware throttling: stop starting new jobs while the host is overloaded.

Configured by the settings (off unless a threshold is set):

- ``JOBKIT_THROTTLE_LOAD``: highest 1-minute load average per CPU core, e.g. ``2.0``;
- ``JOBKIT_THROTTLE_MEMORY``: highest share of memory in use, in percent, e.g. ``90``;
- ``JOBKIT_THROTTLE_INTERVAL_MS``: how often to look (default 1000).

Over a threshold, worker threads stop taking jobs from the worker's queue, so
once its small prefetch window is full the worker fetches nothing more; jobs
already running finish, fetched ones wait (or go back to the broker on
shutdown). Below 90% of every threshold, work resumes. Each pause and each
resume is logged once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq import Broker, Middleware, Worker

from jobkit.errors import BrokerConfigError
from jobkit.settings import Settings

from .dramatiq_seam import work_queue_of

logger = logging.getLogger("jobkit.load_throttle")

LOAD_ENV = "JOBKIT_THROTTLE_LOAD"
MEMORY_ENV = "JOBKIT_THROTTLE_MEMORY"
INTERVAL_ENV = "JOBKIT_THROTTLE_INTERVAL_MS"
RESUME_RATIO = 0.9


@dataclass(frozen=True)
class HostLoad:
    load_per_core: float
    memory_percent: float


def read_host_load() -> HostLoad:
    """1-minute load average per core, and memory in use (MemTotal - MemAvailable) in %."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    meminfo: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                name, _, rest = line.partition(":")
                meminfo[name] = int(rest.split()[0])
        memory = 100.0 * (1 - meminfo["MemAvailable"] / meminfo["MemTotal"])
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        memory = 0.0
    return HostLoad(load_per_core=load, memory_percent=memory)


class LoadThrottle(Middleware):
    """Pauses job starts while :func:`read_host_load` (or an injected source) is over a limit."""

    def __init__(
        self,
        *,
        max_load_per_core: float | None = None,
        max_memory_percent: float | None = None,
        interval_ms: int = 1000,
        load_source: Callable[[], HostLoad] = read_host_load,
        keep_alive: Callable[[Broker], None] | None = None,
    ) -> None:
        self.max_load = max_load_per_core
        self.max_memory = max_memory_percent
        self.interval_ms = interval_ms
        self.load_source = load_source
        #: Shows the broker this worker is alive while paused (``brokers.keep_alive``).
        self.keep_alive = keep_alive
        self.paused = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, keep_alive: Callable[[Broker], None] | None = None
    ) -> LoadThrottle:
        """``JOBKIT_THROTTLE_LOAD``, ``JOBKIT_THROTTLE_MEMORY``, ``JOBKIT_THROTTLE_INTERVAL_MS``."""
        return cls(
            max_load_per_core=settings.throttle_load,
            max_memory_percent=settings.throttle_memory,
            interval_ms=settings.throttle_interval_ms,
            keep_alive=keep_alive,
        )

    @property
    def enabled(self) -> bool:
        return self.max_load is not None or self.max_memory is not None

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if not self.enabled:
            return
        work_queue = work_queue_of(worker)
        if not hasattr(work_queue, "pause"):
            raise BrokerConfigError("LoadThrottle needs the Priorities middleware's work queue")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(broker, work_queue), name="jobkit-load-throttle", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self._stop.set()

    def over(self, load: HostLoad, ratio: float = 1.0) -> list[str]:
        """Which limits ``load`` exceeds (each scaled by ``ratio``), as readable reasons."""
        reasons = []
        if self.max_load is not None and load.load_per_core > self.max_load * ratio:
            reasons.append(f"load {load.load_per_core:.2f} per core > {self.max_load * ratio:.2f}")
        if self.max_memory is not None and load.memory_percent > self.max_memory * ratio:
            reasons.append(f"memory {load.memory_percent:.0f}% > {self.max_memory * ratio:.0f}%")
        return reasons

    def _watch(self, broker: Broker, work_queue: Any) -> None:
        while not self._stop.wait(self.interval_ms / 1000):
            try:
                load = self.load_source()
            except Exception:  # noqa: BLE001 - a broken probe must not stop the worker
                logger.warning("could not read the host load", exc_info=True)
                continue
            if not self.paused and (reasons := self.over(load)):
                self.paused = True
                work_queue.pause()
                logger.warning("host overloaded (%s): not starting new jobs", "; ".join(reasons))
            elif self.paused and not self.over(load, RESUME_RATIO):
                self.paused = False
                work_queue.resume()
                logger.info("host load back to normal: starting jobs again")
            if self.paused and self.keep_alive is not None:
                try:
                    self.keep_alive(broker)
                except Exception:  # noqa: BLE001 - the next round tries again
                    logger.debug("keep-alive failed", exc_info=True)
