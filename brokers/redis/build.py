"""``build_redis_broker``: a :class:`PriorityRedisBroker` with its upkeep middleware."""

from __future__ import annotations

from dramatiq import Middleware

from jobkit.settings import current
from middleware.priorities import PriorityConfig

from ..redis_clients import redis_client
from .broker import NAMESPACE, PriorityRedisBroker
from .checks import RedisSettingsCheck
from .upkeep import SWEEP_INTERVAL_S, DeadWorkerSweep


def build_redis_broker(
    url: str,
    middleware: list[Middleware],
    priority_config: PriorityConfig,
    *,
    heartbeat_timeout_ms: int | None = None,
) -> PriorityRedisBroker:
    """A priority-aware RedisBroker for ``url`` (redis://, rediss:// or unix://); lazy connect.

    A worker silent for ``heartbeat_timeout_ms`` (``JOBKIT_HEARTBEAT_TIMEOUT_MS``) is
    presumed dead and its jobs go to others.
    """
    timeout_ms = heartbeat_timeout_ms or current().heartbeat_timeout_ms
    return PriorityRedisBroker(
        client=redis_client(url),
        namespace=NAMESPACE,
        middleware=[
            *middleware,
            DeadWorkerSweep(interval_s=min(SWEEP_INTERVAL_S, timeout_ms / 2000)),
            RedisSettingsCheck(),
        ],
        priority_config=priority_config,
        heartbeat_timeout=timeout_ms,
    )
