"""Broker-neutral queue statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class QueueDepth:
    """Message counts of one queue.

    ``in_flight`` is the number fetched by workers and not yet acked, and
    ``levels`` the ready count per priority level, where the broker can tell
    (Redis and embedded); ``None`` on RabbitMQ, whose AMQP queue declare
    reports only a queue's total of ready messages.
    """

    queue: str
    ready: int
    delayed: int
    dead_lettered: int
    in_flight: int | None = None
    levels: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
