"""Redis (and embedded Valkey) broker: construction, health check and queue depths."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from dramatiq import Middleware
from dramatiq.brokers.redis import RedisBroker

from .errors import BrokerUnavailable
from .stats import QueueDepth
from .urls import mask_url

NAMESPACE = "dramatiq"


def build_redis_broker(url: str, middleware: list[Middleware]) -> RedisBroker:
    """A RedisBroker for ``url`` (redis://, rediss:// or unix://); connects lazily."""
    return RedisBroker(url=url, namespace=NAMESPACE, middleware=middleware)


def check_redis(broker: RedisBroker, display_url: str) -> None:
    try:
        broker.client.ping()
    except redis.AuthenticationError:
        raise BrokerUnavailable(
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
        pipe.llen(f"{prefix}{name}")
        pipe.llen(f"{prefix}{name}.DQ")
        pipe.zcard(f"{prefix}{name}.XQ")
        ready, delayed, dead = pipe.execute()
        depths.append(
            QueueDepth(
                queue=name,
                ready=int(ready),
                delayed=int(delayed),
                dead_lettered=int(dead),
                in_flight=in_flight.get(name, 0),
            )
        )
    return depths
