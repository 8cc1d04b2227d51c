"""The metrics exporter: one process per worker group serving the workers' sum on HTTP.

The dramatiq CLI runs :func:`serve_metrics` as a fork (``Metrics.forks``). It
sums the worker processes' multiprocess files (``middleware.metrics``), adds
queue depths read from the broker at scrape time, and names its group:
``jobkit_worker_group_info{app, broker}``, so that a reader (``jobkit stats``)
can tell another group's endpoint from its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jobkit.settings import current
from middleware.dramatiq_seam import cli_app
from middleware.log_config import configure_logging
from middleware.metrics import address, group_dir
from middleware.priorities import PriorityConfig

from .depths import queue_depths
from .processes import pid_alive
from .transport import build_transport
from .urls import configured_spec

logger = logging.getLogger("jobkit.metrics")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_metrics() -> int:
    """The exporter (run by the dramatiq CLI as a fork): multiprocess sum plus queue depths."""
    if current().log_format:
        configure_logging()
    directory = group_dir()
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_groups(directory.parent)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    import prometheus_client as prom
    from prometheus_client import multiprocess

    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    registry.register(QueueDepthCollector(directory))
    registry.register(WorkerGroupCollector(*group_identity()))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] not in ("/", "/metrics"):
                self.send_error(404)
                return
            output = prom.generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", prom.CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(output)

        def log_message(self, *args: Any) -> None:
            pass

    host, port = address()
    if not _is_loopback(host):
        logger.warning(
            "metrics: the exporter listens on %s:%d, beyond this host: anyone who reaches it "
            "sees actor and queue names and job counts; keep JOBKIT_METRICS_HOST=127.0.0.1 "
            "and scrape through a proxy or a private network",
            host,
            port,
        )
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        logger.error(
            "metrics: cannot listen on %s:%d (%s); another worker group on this host may serve "
            "there: set JOBKIT_METRICS_PORT to a free port (workers keep running)",
            host,
            port,
            error.strerror or error,
        )
        return 0
    logger.info("metrics: serving on http://%s:%d/metrics", host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _remove_stale_groups(base: Path) -> None:
    """Drop the directories of worker groups whose main process is gone."""
    for entry in base.iterdir():
        if entry.name.isdigit() and not pid_alive(int(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)


def group_identity() -> tuple[str, str]:
    """(app, broker) of this worker group: the app its dramatiq command line loads ("" if
    not run by one) and the masked URL of ``JOBKIT_BROKER_URL``, whose queues it reports."""
    return cli_app(sys.argv) or "", configured_spec(current()).display_url


class WorkerGroupCollector:
    """``jobkit_worker_group_info{app, broker} 1``: whose workers this endpoint counts."""

    def __init__(self, app: str, broker: str) -> None:
        self.labels = {"app": app, "broker": broker}

    def collect(self) -> Any:
        from prometheus_client.core import InfoMetricFamily

        yield InfoMetricFamily(
            "jobkit_worker_group",
            "The worker group this endpoint serves: its app and its broker (masked)",
            value=self.labels,
        )


class QueueDepthCollector:
    """Reads depths of the workers' queues from the broker when Prometheus scrapes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._broker: Any = None

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily(
            "jobkit_queue_depth",
            "Messages per queue and state (ready per priority level where the broker can tell)",
            labels=("queue", "state", "level"),
        )
        try:
            for queue in self._depths():
                levels = queue.levels or {"all": queue.ready}
                for level, count in levels.items():
                    depth.add_metric((queue.queue, "ready", level), count)
                depth.add_metric((queue.queue, "delayed", "all"), queue.delayed)
                depth.add_metric((queue.queue, "dead_lettered", "all"), queue.dead_lettered)
        except Exception as error:  # noqa: BLE001 - a scrape must not fail on a broker hiccup
            logger.warning("metrics: could not read queue depths: %s", error)
        yield depth

    def _depths(self) -> list[Any]:
        if self._broker is None:
            # The exporter is forked before any app is imported: a broker from the
            # environment reads the same queues, whatever module declares the jobs. It
            # only reads depths, so it needs no middleware.
            settings = current()
            self._broker = build_transport(
                configured_spec(settings), [], PriorityConfig.from_settings(settings), settings
            )
        queues: set[str] = set()
        for listing in self.directory.glob("queues-*.json"):
            with contextlib.suppress(OSError, ValueError):
                queues.update(json.loads(listing.read_text()))
        return queue_depths(self._broker, queues)
