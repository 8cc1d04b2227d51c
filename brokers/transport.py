"""The broker a spec names, with the middleware it is given: Redis, RabbitMQ or embedded."""

from __future__ import annotations

from dramatiq import Broker, Middleware

from jobkit.settings import Settings
from middleware.priorities import PriorityConfig

from . import embedded
from .rabbitmq.amqp_broker import build_rabbitmq_broker
from .redis.build import build_redis_broker
from .urls import SPECS, BrokerSpec


def build_transport(
    spec: BrokerSpec, stack: list[Middleware], priority_config: PriorityConfig, settings: Settings
) -> Broker:
    """The broker for ``spec`` with ``stack`` installed; starts the embedded server if needed."""
    heartbeat_ms = settings.heartbeat_timeout_ms
    if spec.kind == "rabbitmq":
        broker: Broker = build_rabbitmq_broker(spec.url, stack, priority_config)
    elif spec.kind == "redis":
        broker = build_redis_broker(
            spec.url, stack, priority_config, heartbeat_timeout_ms=heartbeat_ms
        )
    else:
        assert spec.home is not None
        paths = embedded.ensure_server(spec.home)
        broker = build_redis_broker(
            paths.url, stack, priority_config, heartbeat_timeout_ms=heartbeat_ms
        )
    SPECS[broker] = spec
    return broker
