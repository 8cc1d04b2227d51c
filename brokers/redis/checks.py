"""What a Redis server says: does it answer, are its settings safe, is it out of memory.

:func:`check_redis` (reachable, credentials accepted), :func:`unsafe_settings` and
the worker-boot warning :class:`RedisSettingsCheck`, :func:`is_out_of_memory`, and
``_reason`` (an error's first line, for one-line messages).
"""

from __future__ import annotations

import logging

import redis
from dramatiq import Broker, Middleware, Worker
from dramatiq.brokers.redis import RedisBroker

from jobkit.errors import BrokerRefused, BrokerUnavailable
from jobkit.settings import mask_url

logger = logging.getLogger("jobkit.brokers.redis")


def is_out_of_memory(error: redis.ResponseError) -> bool:
    """Redis refused a write at ``maxmemory`` (with ``noeviction``)."""
    return isinstance(error, redis.exceptions.OutOfMemoryError) or str(error).startswith("OOM")


def unsafe_settings(client: redis.Redis) -> list[str]:
    """What in a Redis server's configuration can lose accepted jobs, one line each."""
    try:
        config = client.config_get("maxmemory-policy") | client.config_get("appendonly")
        config |= client.config_get("save")
    except redis.ResponseError:
        return []  # CONFIG is disabled (managed Redis): nothing to read
    problems = []
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        problems.append(
            f"maxmemory-policy is {policy}: at its memory limit Redis deletes keys, queued "
            "jobs included; set it to noeviction (enqueues then fail with a clear error)"
        )
    if config.get("appendonly") != "yes" and not config.get("save"):
        problems.append(
            "no persistence (appendonly no, no save points): a Redis restart loses every "
            "queued job; set appendonly yes (appendfsync everysec loses at most ~1 s)"
        )
    return problems


class RedisSettingsCheck(Middleware):
    """Warns once per worker process, at boot, about Redis settings that can lose jobs."""

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        try:
            # Only in a Redis broker's stack (redis_broker), which has a client.
            problems = unsafe_settings(broker.client)  # type: ignore[attr-defined]
        except redis.RedisError:
            return  # the consumers report an unreachable server
        for problem in problems:
            logger.warning("unsafe Redis setting: %s", problem)


def check_redis(broker: RedisBroker, display_url: str) -> None:
    try:
        broker.client.ping()
    except redis.AuthenticationError:
        raise BrokerRefused(
            f"Redis at {mask_url(display_url)} refused the credentials; "
            "check the user and password in JOBKIT_BROKER_URL"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise BrokerUnavailable(
            f"cannot reach Redis at {mask_url(display_url)}: {_reason(error)}; "
            "is the server running and JOBKIT_BROKER_URL right?"
        ) from None
    except redis.ResponseError as error:
        raise BrokerUnavailable(f"Redis at {mask_url(display_url)} answered: {error}") from None


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")
