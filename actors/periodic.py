"""Periodic jobs: sent by ``periodiq actors``, run by ``dramatiq actors`` workers.

=========================  ===============  ==============================================
actor                      schedule         what it does
=========================  ===============  ==============================================
``snapshot_queue_depths``  ``* * * * *``    logs ``queues.snapshot``: every queue's depth
``purge_old_dead_letters`` ``17 * * * *``   removes dead letters older than the retention
``daily_summary``          ``0 6 * * *``    writes ``daily-<date>.json``: the last 24 h of
                                            dead letters by queue, actor and reason, and
                                            the queue depths
=========================  ===============  ==============================================

Run the scheduler beside the workers: ``periodiq actors`` (one is enough; a
second one is harmless, see ``middleware.periodic``). A schedule is changed
with ``JOBKIT_CRON_<ACTOR>`` (``JOBKIT_CRON_DAILY_SUMMARY="30 5 * * *"``) or
turned off with ``off``; the actor can still be sent by hand. Times are the
scheduler's local time (periodiq's rule).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import structlog
from periodiq import cron

from actors.outputs import write_atomically
from brokers import queue_depths
from brokers.dead_letter_store import Filters, dead_letter_store, has_store
from jobkit.settings import current
from middleware.dead_letters import iso_ms

QUEUE = "periodic"
REPORT_DIR_ENV = "JOBKIT_REPORT_DIR"

logger = logging.getLogger("jobkit.periodic")
events = structlog.get_logger("jobkit.periodic")


def schedule(actor_name: str, default: str) -> dict[str, Any]:
    """The ``periodic`` option for ``actor_name``: its cron line from the environment or default."""
    line = current().cron.get(actor_name.lower(), default)
    if line.lower() == "off":
        return {}
    return {"periodic": cron(line)}


# The actors return nothing: with no results backend a returned value is dropped, and
# Dramatiq warns about it on every run. What they find is logged or written; the functions
# below them return it, for callers in the same process (and tests).


@dramatiq.actor(queue_name=QUEUE, max_retries=0, **schedule("snapshot_queue_depths", "* * * * *"))
def snapshot_queue_depths() -> None:
    """Log the depth of every queue, so logs keep a history of backlogs."""
    log_queue_depths(dramatiq.get_broker())


def log_queue_depths(broker: dramatiq.Broker) -> list[dict[str, Any]]:
    """Log ``queues.snapshot`` with every queue's depth; returns the depths logged."""
    depths = [depth.as_dict() for depth in queue_depths(broker)]
    events.info("queues.snapshot", queues=depths)
    return depths


@dramatiq.actor(queue_name=QUEUE, max_retries=3, **schedule("purge_old_dead_letters", "17 * * * *"))
def purge_old_dead_letters() -> None:
    """Remove dead letters older than ``JOBKIT_DEAD_LETTER_TTL`` (``0`` keeps them)."""
    purge_expired_dead_letters(dramatiq.get_broker())


def purge_expired_dead_letters(broker: dramatiq.Broker) -> int:
    """Remove ``broker``'s dead letters past the retention, logging how many; returns that."""
    if not has_store(broker):
        logger.warning("dead-letter retention: this broker has no dead-letter store; nothing to do")
        return 0
    store = dead_letter_store(broker)
    if store.ttl_ms <= 0:
        return 0
    cutoff = int(time.time() * 1000) - store.ttl_ms
    removed = store.purge(filters=Filters(before_ms=cutoff))
    logger.info(
        "dead-letter retention: removed %d dead letters failed before %s", removed, iso_ms(cutoff)
    )
    return removed


@dramatiq.actor(queue_name=QUEUE, max_retries=3, **schedule("daily_summary", "0 6 * * *"))
def daily_summary(output_dir: str | None = None) -> None:
    """Write the last 24 h of dead letters and the queue depths to ``daily-<date>.json``."""
    write_daily_summary(dramatiq.get_broker(), output_dir)


def write_daily_summary(broker: dramatiq.Broker, output_dir: str | None = None) -> Path:
    """``daily_summary``'s work: writes the file (in ``output_dir`` or ``JOBKIT_REPORT_DIR``)."""
    now = datetime.now(UTC)
    since_ms = int(now.timestamp() * 1000) - 86_400_000
    by_queue: Counter[str] = Counter()
    by_actor: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    if has_store(broker):
        for record in dead_letter_store(broker).iter(Filters(since_ms=since_ms)):
            by_queue[record.get("queue", "?")] += 1
            by_actor[record.get("actor", "?")] += 1
            by_reason[record.get("reason", "?")] += 1
    summary: dict[str, Any] = {
        "generated_at": now.isoformat(timespec="seconds"),
        "since": iso_ms(since_ms),
        "dead_letters": {
            "total": sum(by_queue.values()),
            "by_queue": dict(by_queue.most_common()),
            "by_actor": dict(by_actor.most_common()),
            "by_reason": dict(by_reason.most_common()),
        },
        "queues": [depth.as_dict() for depth in queue_depths(broker)],
    }
    directory = Path(output_dir) if output_dir else current().report_dir
    path = directory / f"daily-{now:%Y-%m-%d}.json"
    write_atomically(path, json.dumps(summary, indent=2) + "\n")
    logger.info(
        "daily summary written to %s: %d dead letters in 24 h",
        path,
        summary["dead_letters"]["total"],
    )
    return path
