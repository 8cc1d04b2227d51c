"""Broker-neutral queue statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class QueueDepth:
    """Message counts of one queue.

    ``in_flight`` is the number fetched by workers and not yet acked, where the
    broker can tell (Redis and embedded); ``None`` on RabbitMQ, whose AMQP
    queue declare reports ready messages only.
    """

    queue: str
    ready: int
    delayed: int
    dead_lettered: int
    in_flight: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
