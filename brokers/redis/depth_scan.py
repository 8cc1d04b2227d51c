"""Queue depths on Redis, per priority level: :func:`redis_queue_depths` scans the namespace."""

from __future__ import annotations

from collections.abc import Iterable

from dramatiq.brokers.redis import RedisBroker

from middleware.priorities import LEVELS

from ..queue_depth import QueueDepth
from .broker import LEVEL_SUFFIXES


def redis_queue_depths(broker: RedisBroker, declared: Iterable[str]) -> list[QueueDepth]:
    """Depths of every queue that is declared or has keys in the broker's namespace."""
    client = broker.client
    prefix = f"{broker.namespace}:"
    names = set(declared)
    for key in client.scan_iter(match=f"{prefix}*.msgs", count=1000):
        name = key.decode()[len(prefix) : -len(".msgs")]
        for suffix in (".DQ", ".XQ"):
            name = name.removesuffix(suffix)
        names.add(name)
    in_flight: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}__acks__.*", count=1000):
        queue = key.decode()[len(prefix) :].split(".", 2)[-1]
        if queue.endswith(".DQ"):
            continue
        in_flight[queue] = in_flight.get(queue, 0) + int(client.scard(key))
    depths = []
    for name in sorted(n for n in names if n and not n.startswith("__")):
        pipe = client.pipeline(transaction=False)
        for level in LEVELS:
            pipe.llen(f"{prefix}{name}{LEVEL_SUFFIXES[level]}")
        pipe.llen(f"{prefix}{name}.DQ")
        pipe.zcard(f"{prefix}{name}.XQ")
        *per_level, delayed, dead = (int(n) for n in pipe.execute())
        levels = dict(zip(LEVELS, per_level, strict=True))
        depths.append(
            QueueDepth(
                queue=name,
                ready=sum(per_level),
                delayed=delayed,
                dead_lettered=dead,
                in_flight=in_flight.get(name, 0),
                levels=levels,
            )
        )
    return depths
