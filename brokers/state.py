"""Where jobkit keeps shared state (rate limits, dead letters): a Redis the broker can reach."""

from __future__ import annotations

import os

import redis
from dramatiq import Broker
from dramatiq.brokers.redis import RedisBroker

from jobkit.errors import BrokerConfigError

from .redis_clients import redis_client
from .urls import mask_url

STATE_URL_ENV = "JOBKIT_STATE_URL"
#: The name this setting had before dead letters used it too; still read.
OLD_STATE_URL_ENV = "JOBKIT_RATE_LIMIT_URL"


def state_url() -> tuple[str, str]:
    """The state Redis URL from the environment and the variable it came from ('' if unset)."""
    for name in (STATE_URL_ENV, OLD_STATE_URL_ENV):
        url = os.environ.get(name, "").strip()
        if url:
            return url, name
    return "", STATE_URL_ENV


def state_client(broker: Broker) -> tuple[redis.Redis | None, str]:
    """The Redis client for jobkit's state, or ``None`` and why there is none.

    ``$JOBKIT_STATE_URL`` if set; else the broker's own Redis (Redis and
    embedded brokers); else none (RabbitMQ without the variable).
    """
    url, name = state_url()
    if url:
        if not url.lower().startswith(("redis://", "rediss://", "unix://")):
            raise BrokerConfigError(
                f"{name}={mask_url(url)!r} is not a Redis URL; use redis://, rediss:// or unix://"
            )
        return redis_client(url), ""
    if isinstance(broker, RedisBroker):
        return broker.client, ""
    return None, (
        f"{type(broker).__name__} keeps no jobkit state; set {STATE_URL_ENV} to a Redis "
        "URL (e.g. redis://127.0.0.1:6379/0) for rate and concurrency limits and dead letters"
    )
