"""Loss and duplicate accounting for fault tests, kept outside the broker under test.

The test records every message id it sent (and whether ``send`` succeeded);
workers record each start and end through ``tests.support.job_log.JobLog``.
After the run, :func:`account` scans the queue (ready, delayed, in flight) and
the dead-letter store, and says what became of each accepted message.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dramatiq import Broker

from brokers import queue_depths
from brokers.dead_letter_store import dead_letter_store
from tests.support import job_log


@dataclass
class Ledger:
    """What the test sent: ids the broker accepted, and how many sends failed."""

    accepted: set[str] = field(default_factory=set)
    send_failures: int = 0


@dataclass(frozen=True)
class Accounting:
    accepted: int
    send_failures: int
    finished: int
    #: Accepted, never finished, not dead-lettered and not waiting anywhere.
    lost: list[str]
    #: Message id -> times it finished, for those that finished more than once.
    duplicated: dict[str, int]
    #: Messages still ready, delayed or in flight.
    stuck: int
    dead_lettered: int

    def summary(self) -> str:
        return (
            f"accepted {self.accepted} ({self.send_failures} sends failed), "
            f"finished {self.finished}, lost {len(self.lost)}, "
            f"duplicated {sum(n - 1 for n in self.duplicated.values())}, stuck {self.stuck}, "
            f"dead-lettered {self.dead_lettered}"
        )


def finished(log_path: Path) -> Counter[str]:
    return Counter(e["id"] for e in job_log.read(log_path) if e["event"] == "end")


def account(ledger: Ledger, log_path: Path, broker: Broker, queue: str) -> Accounting:
    ends = finished(log_path)
    dead = {record["id"] for record in dead_letter_store(broker).iter()}
    (depth,) = (d for d in queue_depths(broker, {queue}) if d.queue == queue)
    stuck = depth.ready + depth.delayed + (depth.in_flight or 0)
    return Accounting(
        accepted=len(ledger.accepted),
        send_failures=ledger.send_failures,
        finished=sum(1 for message_id in ledger.accepted if ends[message_id]),
        lost=sorted(
            message_id
            for message_id in ledger.accepted
            if not ends[message_id] and message_id not in dead
        )
        if stuck == 0
        else [],
        duplicated={i: n for i, n in ends.items() if n > 1 and i in ledger.accepted},
        stuck=stuck,
        dead_lettered=len(dead & ledger.accepted),
    )


def locate_on_redis(broker: Broker, queue: str, message_ids: set[str]) -> str:
    """Where each of ``message_ids`` is in a Redis broker's key space, one line each.

    For a fault test's failure message: a job neither finished nor dead-lettered
    is in a level list, a delay list, a worker's unacked set, or nowhere.
    """
    client = broker.client  # type: ignore[attr-defined]
    prefix = f"{broker.namespace}:"  # type: ignore[attr-defined]
    redis_ids: dict[str, str] = {}
    for hash_key in (f"{prefix}{queue}.msgs", f"{prefix}{queue}.DQ.msgs"):
        for redis_id, payload in client.hscan_iter(hash_key, count=1000):
            message_id = json.loads(payload).get("message_id")
            if message_id in message_ids:
                redis_ids[redis_id.decode()] = message_id
    places: dict[str, list[str]] = {redis_id: [] for redis_id in redis_ids}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        name, kind = key.decode(), client.type(key).decode()
        if kind == "list":
            members = {m.decode() for m in client.lrange(key, 0, -1)}
        elif kind == "set":
            members = {m.decode() for m in client.smembers(key)}
        else:
            continue
        for redis_id in members & places.keys():
            places[redis_id].append(name)
    beats = client.zrange(f"{prefix}__heartbeats__", 0, -1, withscores=True)
    heartbeats = {worker.decode(): score for worker, score in beats}
    lines = [f"heartbeats: {heartbeats}"]
    lines += [
        f"{redis_ids[r]} (redis id {r}): {', '.join(where) or 'in no list or set'}"
        for r, where in places.items()
    ]
    missing = message_ids - set(redis_ids.values())
    lines += [f"{m}: no payload in {queue}.msgs or {queue}.DQ.msgs" for m in sorted(missing)]
    return "\n".join(lines)
