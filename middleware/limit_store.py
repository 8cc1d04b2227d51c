"""What :class:`~middleware.rate_limits.RateLimits` asks of a limit store, and what it gets back.

The store itself (shared state, atomic decisions) is a broker-side part:
``brokers/redis_limit_store.py`` keeps it in Redis. ``build_stack`` hands
``RateLimits`` a factory that makes one from the state Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import redis


class Outcome(IntEnum):
    RUN = 0
    WAIT_FOR_RATE = 1
    WAIT_FOR_CONCURRENCY = 2
    OVER_MAX_WAIT = 3


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    wait_ms: int
    #: The rate slot this job holds (-1: none); a deferred job carries it back.
    slot_ms: int
    #: The store's clock, ms since the epoch.
    now_ms: int


@dataclass(frozen=True)
class Ask:
    """One job's request: its keys and limits, and what it carries from earlier deferrals."""

    rate_key: str
    concurrency_key: str
    interval_ms: float = 0.0
    burst: int = 1
    concurrency: int = 0
    #: Unique per delivery: a retry of the same job may run while this one ends.
    lease_id: str = ""
    waiter_id: str = ""
    lease_ms: int = 30_000
    slot_ms: int = -1
    since_ms: int = -1
    max_wait_ms: int = 3_600_000
    default_duration_ms: int = 100


class LimitStore(Protocol):
    """Rate and concurrency state shared by every worker; each decision is atomic."""

    def acquire(self, ask: Ask) -> Decision:
        """Run now, or wait for a rate slot or a concurrency slot, or give up (``Outcome``)."""
        ...

    def release(self, concurrency_key: str, lease_id: str, duration_ms: int) -> None:
        """Free a concurrency slot; ``duration_ms`` is how long the job ran."""
        ...

    def renew(self, leases: Iterable[tuple[str, str]], lease_ms: int) -> None:
        """Extend the held leases ``(concurrency key, lease id)`` by ``lease_ms``."""
        ...

    def running(self, concurrency_key: str) -> int:
        """Leases currently held under ``concurrency_key``."""
        ...


#: Makes the store from the state Redis (``after_state_store``).
LimitStoreFactory = Callable[[redis.Redis], LimitStore]
