"""One way to get jobkit's Dramatiq broker: ``JOBKIT_BROKER_URL`` -> broker + middleware.

Every entry point (app code via ``import actors``, ``dramatiq actors``,
``periodiq actors``, the ``jobkit`` CLI, tests, benchmarks) goes through
:func:`build_broker` or :func:`setup_broker`, so each gets the same broker
kind and the same middleware stack.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref

import dramatiq
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from jobkit.errors import (
    BrokerBlocked,
    BrokerConfigError,
    BrokerFull,
    BrokerUnavailable,
    EmbeddedServerError,
    JobkitError,
)

# Submodules that import middleware are imported inside functions: middleware
# imports brokers.decoding, and must not find this package half-initialised.
from .bulk import BulkSendError, send_many
from .stats import QueueDepth
from .urls import BROKER_URL_ENV, BrokerSpec, mask_url, parse_broker_url, spec_from_env

__all__ = [
    "BROKER_URL_ENV",
    "BrokerBlocked",
    "BrokerConfigError",
    "BrokerFull",
    "BrokerSpec",
    "BrokerUnavailable",
    "BulkSendError",
    "EmbeddedServerError",
    "JobkitError",
    "QueueDepth",
    "build_broker",
    "check_broker",
    "mask_url",
    "parse_broker_url",
    "queue_depths",
    "send_many",
    "setup_broker",
    "spec_of",
]

_specs: weakref.WeakKeyDictionary[Broker, BrokerSpec] = weakref.WeakKeyDictionary()
_global_lock = threading.Lock()
_global_broker: Broker | None = None


def build_broker(url: str | None = None, *, spec: BrokerSpec | None = None) -> Broker:
    """Build a broker with jobkit's full middleware stack.

    ``url`` defaults to ``$JOBKIT_BROKER_URL``; unset means the embedded
    server, which is started here if no process has started it yet. The
    broker itself connects lazily (except the embedded server's start).
    """
    from middleware import build_stack
    from middleware.message_guard import check_encoder
    from middleware.priorities import PriorityConfig

    from . import embedded
    from .decoding import MessageRules
    from .rabbitmq import build_rabbitmq_broker
    from .redis import build_redis_broker

    if spec is None:
        spec = parse_broker_url(url) if url is not None else spec_from_env()
    if os.environ.get("JOBKIT_LOG_FORMAT"):
        from middleware.job_logging import configure_logging

        configure_logging()
    # Before any broker exists: sentry-sdk's Dramatiq integration hooks Broker.__init__.
    from middleware.sentry import init_sentry

    init_sentry()
    check_encoder()
    rules = MessageRules.from_env()
    priority_config = PriorityConfig.from_env()
    stack = build_stack(priority_config, rules)
    if spec.kind == "rabbitmq":
        broker: Broker = build_rabbitmq_broker(spec.url, stack, priority_config)
    elif spec.kind == "redis":
        broker = build_redis_broker(spec.url, stack, priority_config)
    else:
        assert spec.home is not None
        paths = embedded.ensure_server(spec.home)
        broker = build_redis_broker(paths.url, stack, priority_config)
    broker.message_rules = rules  # type: ignore[attr-defined] - read by jobkit's consumers
    _specs[broker] = spec
    use_state(broker)
    return broker


def use_state(broker: Broker) -> None:
    """Give rate limits, tick locks and dead letters the state Redis (``brokers.state``)."""
    from .dead_letters import use_dead_letter_store
    from .state import state_client

    client, reason = state_client(broker)
    for middleware in broker.middleware:
        if hasattr(middleware, "use_store"):  # RateLimits, PeriodicTicks, CrashLoops
            middleware.use_store(client, reason)
    use_dead_letter_store(broker, client, reason)


def setup_broker() -> Broker:
    """Build the broker from the environment once per process and make it Dramatiq's global.

    ``import actors`` calls this before declaring any actor.
    """
    global _global_broker
    with _global_lock:
        if _global_broker is None:
            _global_broker = build_broker()
            dramatiq.set_broker(_global_broker)
        return _global_broker


def spec_of(broker: Broker) -> BrokerSpec:
    """The spec a broker was built from (raises ``KeyError`` for brokers not built here)."""
    return _specs[broker]


def check_broker(broker: Broker) -> None:
    """Raise a one-line :class:`BrokerUnavailable` unless ``broker`` answers."""
    from .rabbitmq import check_rabbitmq
    from .redis import check_redis

    spec = _specs.get(broker)
    if isinstance(broker, RedisBroker):
        check_redis(broker, spec.display_url if spec else "the configured Redis")
    elif isinstance(broker, RabbitmqBroker):
        check_rabbitmq(spec_of(broker).url)


def keep_alive(broker: Broker) -> None:
    """Tell the broker this worker is alive while it fetches nothing (e.g. throttled).

    Redis infers liveness from traffic: a worker silent for the heartbeat
    timeout is presumed dead and its unacked jobs are given to others.
    RabbitMQ's connection heartbeats need nothing from us.
    """
    if isinstance(broker, RedisBroker):
        for queue in sorted(broker.get_declared_queues())[:1]:
            broker.do_qsize(queue)


def queue_depths(broker: Broker, queues: set[str] | None = None) -> list[QueueDepth]:
    """Ready / delayed / dead-lettered (and, where known, in-flight) counts per queue.

    Covers the queues declared on ``broker`` plus ``queues``; on Redis also
    every queue found in the broker's namespace.
    """
    from .dead_letters import DeadLetterError, dead_letter_store
    from .rabbitmq import rabbitmq_queue_depths
    from .redis import redis_queue_depths

    names = set(broker.get_declared_queues()) | set(queues or ())
    try:
        dead = dead_letter_store(broker).counts_by_queue()
    except DeadLetterError:  # no store (RabbitMQ without JOBKIT_STATE_URL): .XQ counts only
        dead = {}
    names |= set(dead)
    if isinstance(broker, RedisBroker):
        depths = redis_queue_depths(broker, names)
    elif isinstance(broker, RabbitmqBroker):
        depths = rabbitmq_queue_depths(broker, names)
    else:
        raise BrokerConfigError(f"queue depths are not supported on {type(broker).__name__}")
    # Dead letters live in jobkit's store; the broker's own .XQ holds only what
    # could not be stored (or what plain Dramatiq put there): both count.
    return [
        dataclasses.replace(d, dead_lettered=d.dead_lettered + dead.get(d.queue, 0)) for d in depths
    ]
