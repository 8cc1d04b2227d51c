"""Where middleware keeps shared state (rate limits): a Redis the broker can reach."""

from __future__ import annotations

import os

import redis
from dramatiq import Broker
from dramatiq.brokers.redis import RedisBroker

from .errors import BrokerConfigError
from .urls import mask_url

RATE_LIMIT_URL_ENV = "JOBKIT_RATE_LIMIT_URL"


def limit_state_client(broker: Broker) -> tuple[redis.Redis | None, str]:
    """The Redis client for limit state, or ``None`` and why there is none.

    ``$JOBKIT_RATE_LIMIT_URL`` if set; else the broker's own Redis (Redis and
    embedded brokers); else none (RabbitMQ without the variable).
    """
    url = os.environ.get(RATE_LIMIT_URL_ENV, "").strip()
    if url:
        if not url.lower().startswith(("redis://", "rediss://", "unix://")):
            raise BrokerConfigError(
                f"{RATE_LIMIT_URL_ENV}={mask_url(url)!r} is not a Redis URL; "
                "use redis://, rediss:// or unix://"
            )
        return redis.Redis.from_url(url), ""
    if isinstance(broker, RedisBroker):
        return broker.client, ""
    return None, (
        f"{type(broker).__name__} keeps no limit state; set {RATE_LIMIT_URL_ENV} to a Redis "
        "URL (e.g. redis://127.0.0.1:6379/0) for rate and concurrency limits"
    )
