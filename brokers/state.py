"""Where jobkit keeps shared state (rate limits, dead letters): a Redis the broker can reach."""

from __future__ import annotations

import redis
from dramatiq import Broker
from dramatiq.brokers.redis import RedisBroker

from jobkit.settings import Settings, current

from .redis_clients import redis_client

STATE_URL_ENV = "JOBKIT_STATE_URL"


def state_client(
    broker: Broker, settings: Settings | None = None
) -> tuple[redis.Redis | None, str]:
    """The Redis client for jobkit's state, or ``None`` and why there is none.

    ``JOBKIT_STATE_URL`` if set; else the broker's own Redis (Redis and
    embedded brokers); else none (RabbitMQ without the variable).
    """
    url = (settings or current()).state_url  # checked to be a Redis URL when the settings were read
    if url:
        return redis_client(url), ""
    if isinstance(broker, RedisBroker):
        return broker.client, ""
    return None, (
        f"{type(broker).__name__} keeps no jobkit state; set {STATE_URL_ENV} to a Redis "
        "URL (e.g. redis://127.0.0.1:6379/0) for rate and concurrency limits, dead letters and "
        "job records"
    )
