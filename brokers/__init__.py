"""One way to get jobkit's Dramatiq broker: ``JOBKIT_BROKER_URL`` -> broker + middleware.

Every entry point (app code via ``import actors``, ``dramatiq actors``,
``periodiq actors``, the ``jobkit`` CLI, tests, benchmarks) goes through
:func:`build_broker` or :func:`setup_broker`, so each gets the same broker
kind and the same middleware stack.
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq import Broker

from jobkit.errors import (
    BrokerBlocked,
    BrokerConfigError,
    BrokerFull,
    BrokerUnavailable,
    EmbeddedServerError,
    JobkitError,
)
from jobkit.settings import Settings, current
from middleware.log_config import configure_logging
from middleware.message_guard import MessageRules, check_encoder
from middleware.priorities import PriorityConfig
from middleware.sentry import init_sentry

from .bulk import BulkSendError, send_many
from .dead_letter_store import use_dead_letter_store
from .depths import queue_depths
from .liveness import RefusedAtBoot, check_broker, keep_alive
from .queue_depth import QueueDepth
from .stack import build_stack
from .state import state_client
from .transport import build_transport
from .urls import BROKER_URL_ENV, BrokerSpec, configured_spec, mask_url, parse_broker_url, spec_of

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
    "keep_alive",
    "mask_url",
    "parse_broker_url",
    "queue_depths",
    "send_many",
    "setup_broker",
    "spec_of",
]

_global_lock = threading.Lock()
_global_broker: Broker | None = None


def build_broker(
    url: str | None = None, *, spec: BrokerSpec | None = None, settings: Settings | None = None
) -> Broker:
    """Build a broker with jobkit's full middleware stack.

    ``settings`` default to this process's (``jobkit.settings.current()``, read from
    the environment once; a bad value raises :class:`SettingsError` in one line).
    ``url`` defaults to their ``JOBKIT_BROKER_URL``; unset means the embedded
    server, which is started here if no process has started it yet. The
    broker itself connects lazily (except the embedded server's start).
    """
    settings = settings or current()
    if spec is None:
        spec = parse_broker_url(url) if url is not None else configured_spec(settings)
    if settings.log_format:
        configure_logging()
    # Before any broker exists: sentry-sdk's Dramatiq integration hooks Broker.__init__.
    init_sentry(settings)
    check_encoder()
    rules = MessageRules.from_settings(settings)
    priority_config = PriorityConfig.from_settings(settings)
    broker = build_transport(spec, build_stack(settings), priority_config, settings)
    # Last, and harmless elsewhere: only a dramatiq CLI worker process acts on it.
    broker.add_middleware(RefusedAtBoot())
    broker.message_rules = rules  # type: ignore[attr-defined]  # read by jobkit's consumers
    use_state(broker, settings)
    return broker


def use_state(broker: Broker, settings: Settings | None = None) -> None:
    """Give rate limits, tick locks and dead letters the state Redis (``brokers.state``)."""
    client, reason = state_client(broker, settings)
    use_dead_letter_store(broker, client, reason)
    broker.emit_after("state_store", client, reason)


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
